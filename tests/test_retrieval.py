"""Retrieval metrics against brute-force loops, and the ``evaluate retrieval`` command on embedding files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from soundingearth_zoo import retrieval
from soundingearth_zoo.cli import main
from soundingearth_zoo.errors import InputError
from soundingearth_zoo.retrieval import haversine_km, retrieval_metrics


@pytest.fixture(params=["one tile", "many tiles"])
def tiling(request, monkeypatch):
    """Run on the default tiling (one tile at these sizes) and on 16-row tiles, whose last tile is partly padding;
    the top k then runs over blocks of 7 query rows."""
    if request.param == "many tiles":
        monkeypatch.setattr(retrieval, "_TILE", 12)  # 12 rounds up to 16-row tiles
        monkeypatch.setattr(retrieval, "_CHUNK_ELEMENTS", 7 * 30)
    return request.param


def _grid_embeddings(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Small-integer embeddings: exact squared distances, hence many ties; plus duplicated rows."""
    rng = np.random.default_rng(seed)
    image, audio = (rng.integers(-1, 2, size=(n, dim)).astype(np.float32) for _ in range(2))
    image[3], audio[3] = image[5], audio[5]  # a duplicated pair
    audio[7] = audio[8]  # a duplicated candidate
    image[9] = audio[9]  # a true partner at distance 0 ...
    image[10] = audio[9]  # ... and another query at distance 0 from it
    return image, audio


def _brute_force_ranks(queries: np.ndarray, candidates: np.ndarray, scale=None) -> list[int]:
    """rank = 1 + candidates strictly closer + other candidates exactly as close, by plain loops."""
    def dist(q, c):
        d = math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(queries[q], candidates[c])))
        return d if scale is None else d / scale(q, c)

    ranks = []
    for q in range(len(queries)):
        true = dist(q, q)
        others = [dist(q, c) for c in range(len(candidates)) if c != q]
        ranks.append(1 + sum(d < true for d in others) + sum(d == true for d in others))
    return ranks


@pytest.mark.parametrize("seed", [0, 1])
def test_ranks_match_brute_force_with_ties_and_duplicates(seed, tiling):
    image, audio = _grid_embeddings(40, 3, seed)
    results = retrieval_metrics(image, audio, ks=(1, 5, 10))
    expected_i2a = _brute_force_ranks(image, audio)
    expected_a2i = _brute_force_ranks(audio, image)
    assert results["image_to_audio"]["ranks"].tolist() == expected_i2a
    assert results["audio_to_image"]["ranks"].tolist() == expected_a2i
    # Ties really occur in this case, and count against the model.
    assert len(set(expected_i2a)) < len(expected_i2a)
    for direction, expected in (("image_to_audio", expected_i2a), ("audio_to_image", expected_a2i)):
        res = results[direction]
        for k in (1, 5, 10):
            assert res[f"recall@{k}"] == pytest.approx(sum(r <= k for r in expected) / len(expected))
        assert res["median_rank"] == pytest.approx(float(np.median(expected)))
        assert res["mean_rank"] == pytest.approx(sum(expected) / len(expected))


def test_ties_rank_true_partner_last_among_equals():
    # Every candidate is the same point: the true partner ties with all of them, so it ranks last.
    image = np.zeros((6, 4), np.float32)
    audio = np.ones((6, 4), np.float32)
    results = retrieval_metrics(image, audio, ks=(1, 6))
    assert results["image_to_audio"]["ranks"].tolist() == [6] * 6
    assert results["image_to_audio"]["recall@1"] == 0.0
    assert results["image_to_audio"]["recall@6"] == 1.0


def test_collapsed_embeddings_rank_last_over_many_tiles(tiling):
    # A collapsed model: one random (not exactly representable) vector per modality. Every distance is one float
    # wherever it lies, so every true partner ties with all candidates; a diagonal computed apart from the tiles
    # (as rowwise dot products) differs in the last bit and breaks this.
    rng = np.random.default_rng(9)
    image = np.repeat(rng.normal(size=(1, 128)), 40, axis=0).astype(np.float32)
    audio = np.repeat(rng.normal(size=(1, 128)), 40, axis=0).astype(np.float32)
    for normalise in (False, True):
        results = retrieval_metrics(image, audio, ks=(1,), normalise=normalise)
        for direction in retrieval.DIRECTIONS:
            assert results[direction]["ranks"].tolist() == [40] * 40


def test_reference_rank_convention_counts_the_top_k_minus_one():
    image, audio = _grid_embeddings(40, 3, 2)
    le = retrieval_metrics(image, audio, ks=(1, 5, 10), rank_convention="le")
    lt = retrieval_metrics(image, audio, ks=(1, 5, 10), rank_convention="lt")
    ranks = le["image_to_audio"]["ranks"]
    np.testing.assert_array_equal(lt["image_to_audio"]["ranks"], ranks)
    for k in (1, 5, 10):
        assert lt["image_to_audio"][f"recall@{k}"] == pytest.approx(np.mean(ranks < k))
        assert le["image_to_audio"][f"recall@{k}"] == pytest.approx(np.mean(ranks <= k))
    assert lt["image_to_audio"]["recall@1"] == 0.0
    assert "rank < k" in lt["recall_definition"] and "rank <= k" in le["recall_definition"]


def test_normalise_divides_by_each_images_mean_distance(tiling):
    rng = np.random.default_rng(3)
    image, audio = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    image[:5] *= 4  # images far from everything: their normalisation matters for audio-to-image
    mean = [np.mean([np.linalg.norm(image[j] - audio[a]) for a in range(30)]) for j in range(30)]
    results = retrieval_metrics(image, audio, ks=(1,), normalise=True)
    expected_i2a = _brute_force_ranks(image, audio, scale=lambda q, c: mean[q])
    expected_a2i = _brute_force_ranks(audio, image, scale=lambda q, c: mean[c])
    assert results["image_to_audio"]["ranks"].tolist() == expected_i2a
    assert results["audio_to_image"]["ranks"].tolist() == expected_a2i
    plain = retrieval_metrics(image, audio, ks=(1,))
    # A per-query scale leaves image-to-audio ranks alone; per-candidate scales change audio-to-image ranks.
    np.testing.assert_array_equal(plain["image_to_audio"]["ranks"], expected_i2a)
    assert plain["audio_to_image"]["ranks"].tolist() != expected_a2i
    assert results["normalise"] and "mean distance" in results["distance"]


def _exact_ranks(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Ranks from exact integer squared distances, vectorised: rank = candidates at a distance <= the partner's."""
    q, c = queries.astype(np.int64), candidates.astype(np.int64)
    dist = ((q[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
    return (dist <= dist.diagonal()[:, None]).sum(axis=1)


@pytest.mark.parametrize(("n", "tile"), [(150, 12), (150, 64), (161, 40), (9, 1)])
def test_ranks_over_many_tiles_match_exact_ranks(monkeypatch, n, tile):
    # Integer embeddings: exact float32 distances, many ties, and duplicated rows whose copies lie in other tiles.
    rng = np.random.default_rng(n + tile)
    image, audio = (rng.integers(-2, 3, size=(n, 4)).astype(np.float32) for _ in range(2))
    image[n // 2:n // 2 + 5], audio[n // 3:n // 3 + 5] = image[:5], audio[:5]
    image[-1] = audio[-1] = audio[0]
    monkeypatch.setattr(retrieval, "_TILE", tile)
    i2a, a2i = retrieval.true_partner_ranks(torch.from_numpy(image), torch.from_numpy(audio))
    np.testing.assert_array_equal(i2a.numpy(), _exact_ranks(image, audio))
    np.testing.assert_array_equal(a2i.numpy(), _exact_ranks(audio, image))


def test_distance_tiles_cover_the_matrix_once_diagonal_first(monkeypatch):
    rng = np.random.default_rng(8)
    image, audio = (torch.from_numpy(rng.integers(-3, 4, size=(45, 5)).astype(np.float32)) for _ in range(2))
    monkeypatch.setattr(retrieval, "_TILE", 12)
    seen = torch.zeros(45, 45, dtype=torch.long)
    tiles = [(rows, cols, dist.clone()) for rows, cols, dist in retrieval._distance_tiles(image, audio)]
    for rows, cols, dist in tiles:
        torch.testing.assert_close(dist, torch.cdist(image[rows], audio[cols]) ** 2, rtol=0, atol=1e-4)
        seen[rows, cols] += 1
    assert (seen == 1).all()
    num_diagonal = sum(rows == cols for rows, cols, _ in tiles)
    assert num_diagonal == 3 and all(rows == cols for rows, cols, _ in tiles[:num_diagonal])
    # 16-row tiles (12 rounded up to a multiple of 8), the last trimmed to the 13 rows left
    assert {tuple(dist.shape) for _, _, dist in tiles} == {(16, 16), (16, 13), (13, 16), (13, 13)}


def test_many_tiles_equal_one_tile_with_every_option(monkeypatch):
    image, audio = _grid_embeddings(50, 4, 4)
    coords = np.random.default_rng(4).uniform(-50, 50, size=(50, 2))
    options = [{}, {"normalise": True}, {"coords": coords}, {"coords": coords, "normalise": True}]
    whole = [retrieval_metrics(image, audio, ks=(1, 10), **kw) for kw in options]
    monkeypatch.setattr(retrieval, "_TILE", 7)  # 8-row tiles, the last of 2 rows
    monkeypatch.setattr(retrieval, "_CHUNK_ELEMENTS", 7 * 50)  # top k over blocks of 7 query rows
    for kw, expected in zip(options, whole):
        got = retrieval_metrics(image, audio, ks=(1, 10), **kw)
        for direction in retrieval.DIRECTIONS:
            np.testing.assert_array_equal(got[direction]["ranks"], expected[direction]["ranks"])
            if "coords" in kw:
                assert got[direction]["nearest_km@10"] == pytest.approx(expected[direction]["nearest_km@10"])


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        ((0.0, 0.0), (0.0, 90.0), math.pi / 2 * 6371.0),  # a quarter of the equator
        ((0.0, 0.0), (0.0, 180.0), math.pi * 6371.0),  # antipodes
        ((90.0, 0.0), (0.0, 37.0), math.pi / 2 * 6371.0),  # pole to equator
        ((51.5007, -0.1246), (40.6892, -74.0445), 5574.8),  # Big Ben to the Statue of Liberty
        ((12.3, 45.6), (12.3, 45.6), 0.0),
    ],
)
def test_haversine_known_distances(a, b, km):
    got = haversine_km(*(torch.tensor(v) for v in (*a, *b)))
    assert got.item() == pytest.approx(km, abs=0.5)


def test_geographic_distance_to_nearest_of_top_k(tiling):
    rng = np.random.default_rng(5)
    n = 30
    image, audio = rng.normal(size=(n, 6)), rng.normal(size=(n, 6))
    coords = np.column_stack([rng.uniform(-60, 60, n), rng.uniform(-180, 180, n)])
    ks = (1, 3, 10, 50)
    results = retrieval_metrics(image, audio, coords=coords, ks=ks)

    def km(i, j):
        (la1, lo1), (la2, lo2) = np.radians(coords[i]), np.radians(coords[j])
        h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
        return 2 * 6371.0 * math.asin(math.sqrt(h))

    for direction, (queries, candidates) in {"image_to_audio": (image, audio),
                                             "audio_to_image": (audio, image)}.items():
        for k in ks:
            nearest = []
            for q in range(n):
                order = sorted(range(n), key=lambda c: np.linalg.norm(queries[q] - candidates[c]))
                nearest.append(min(km(q, c) for c in order[:k]))
            stats = results[direction][f"nearest_km@{k}"]
            assert stats["median"] == pytest.approx(float(np.median(nearest)), rel=1e-9)
            assert stats["mean"] == pytest.approx(float(np.mean(nearest)), rel=1e-9)
    assert results["image_to_audio"]["nearest_km@50"]["median"] == 0.0  # k >= N: the partner is always there


def test_invalid_inputs_are_input_errors():
    emb = np.zeros((4, 3), np.float32)
    with pytest.raises(InputError, match="differ in shape"):
        retrieval_metrics(emb, np.zeros((4, 2), np.float32))
    with pytest.raises(InputError, match="NaN"):
        retrieval_metrics(emb, np.full((4, 3), np.nan, np.float32))
    with pytest.raises(InputError, match="rank_convention"):
        retrieval_metrics(emb, emb, rank_convention="<")
    with pytest.raises(InputError, match="coords"):
        retrieval_metrics(emb, emb, coords=np.zeros((3, 2)))


# --- the command line ---------------------------------------------------------------------------------------------


def _save(path, keys, embeddings):
    np.savez(path, keys=np.array(keys), embeddings=np.asarray(embeddings, np.float32))
    return str(path)


def test_cli_from_embedding_files(tmp_path, capsys):
    rng = np.random.default_rng(6)
    keys = [str(k) for k in range(100, 130)]
    image, audio = rng.normal(size=(30, 8)), rng.normal(size=(30, 8))
    order = rng.permutation(30)  # the audio file lists the same keys in another order
    image_file = _save(tmp_path / "img.npz", keys, image)
    audio_file = _save(tmp_path / "aud.npz", [keys[i] for i in order], audio[order])
    metadata = tmp_path / "metadata.csv"
    metadata.write_text("key,latitude,longitude,title\n" + "".join(
        f"{k},{10 + i * 0.5},{20 - i},clip {i}\n" for i, k in enumerate(keys)))
    out = tmp_path / "eval"
    assert main(["evaluate", "retrieval", "--image-embeddings", image_file, "--audio-embeddings", audio_file,
                 "--metadata", str(metadata), "--out", str(out), "--ks", "1", "5", "10"]) == 0

    saved = json.loads((out / "retrieval.json").read_text())
    expected = retrieval_metrics(image, audio, coords=np.column_stack([10 + np.arange(30) * 0.5, 20 - np.arange(30)]),
                                 ks=(1, 5, 10))
    for direction in retrieval.DIRECTIONS:
        assert saved[direction]["recall@5"] == pytest.approx(expected[direction]["recall@5"])
        assert saved[direction]["nearest_km@10"] == pytest.approx(expected[direction]["nearest_km@10"])
        assert "ranks" not in saved[direction]
    ranks_csv = (out / "ranks.csv").read_text().splitlines()
    assert ranks_csv[1] == f"100,{expected['image_to_audio']['ranks'][0]},{expected['audio_to_image']['ranks'][0]}"
    assert "| image → audio |" in (out / "retrieval.md").read_text()
    assert (out / "recall_at_k.png").read_bytes().startswith(b"\x89PNG")
    assert not (out / "gallery.png").exists()
    assert "gallery.png not drawn" in capsys.readouterr().out


def test_cli_labels_the_reference_conventions(tmp_path):
    rng = np.random.default_rng(7)
    keys = [f"k{i}" for i in range(20)]
    image_file = _save(tmp_path / "img.npz", keys, rng.normal(size=(20, 4)))
    audio_file = _save(tmp_path / "aud.npz", keys, rng.normal(size=(20, 4)))
    out = tmp_path / "eval"
    assert main(["evaluate", "retrieval", "--image-embeddings", image_file, "--audio-embeddings", audio_file,
                 "--rank-convention", "lt", "--normalise", "--out", str(out)]) == 0
    saved = json.loads((out / "retrieval.json").read_text())
    assert saved["rank_convention"] == "lt" and saved["normalise"] is True
    assert saved["ks"] == list(retrieval.DEFAULT_KS)
    markdown = (out / "retrieval.md").read_text()
    assert "rank < k (the reference code's convention" in markdown
    assert "divided by each image's mean distance" in markdown


@pytest.mark.parametrize(
    ("audio_keys", "audio_dim", "message"),
    [
        (["a", "b", "x"], 4, "different keys: 1 only in the image file (e.g. 'c'), 1 only in the audio file"),
        (["a", "b", "c"], 5, "4-d but audio embeddings 5-d"),
    ],
)
def test_cli_mismatch_is_one_line_error(tmp_path, capsys, audio_keys, audio_dim, message):
    image_file = _save(tmp_path / "img.npz", ["a", "b", "c"], np.ones((3, 4)))
    audio_file = _save(tmp_path / "aud.npz", audio_keys, np.ones((3, audio_dim)))
    code = main(["evaluate", "retrieval", "--image-embeddings", image_file, "--audio-embeddings", audio_file,
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_rejects_bad_files(tmp_path, capsys):
    image_file = _save(tmp_path / "img.npz", ["a", "b"], np.ones((2, 4)))
    not_npz = tmp_path / "aud.npz"
    not_npz.write_text("not a zip")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, keys=np.array(["a", "b"], dtype=object), embeddings=np.ones((2, 4)))
    for audio_file in (not_npz, pickled, tmp_path / "missing.npz"):
        code = main(["evaluate", "retrieval", "--image-embeddings", image_file, "--audio-embeddings",
                     str(audio_file), "--out", str(tmp_path / "out")])
        assert code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
