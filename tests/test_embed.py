"""``soundingearth-zoo embed`` and ``search`` end to end: real files, local weights, skipped inputs, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from _audio_helpers import make_signal, write_audio
from PIL import Image
from safetensors.torch import save_file

import soundingearth_zoo
from soundingearth_zoo.audio import FRONTEND_METADATA_KEY, FrontendConfig, read_windows
from soundingearth_zoo.cli import main
from soundingearth_zoo.images import eval_transform, load_image

IMAGE = "soundingearth_resnet18"
AUDIO = soundingearth_zoo.AUDIO_MODEL
# Saved with the audio weight, so the CLI must read it; small windows keep the test fast.
FRONTEND = FrontendConfig(n_mels=64, window_frames=40, mean=-6.0, std=4.0, max_windows=4)


def _tower_file(name: str, path: Path, seed: int, frontend: FrontendConfig | None = None) -> torch.nn.Module:
    model = timm.create_model(name)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.05)
    metadata = {FRONTEND_METADATA_KEY: frontend.to_json()} if frontend else None
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata=metadata)
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("embed")
    images, audio = root / "images", root / "audio"
    (images / "nested").mkdir(parents=True)
    audio.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "101.jpg")
    Image.fromarray(pixels[..., 0]).save(images / "nested" / "102.png")
    Image.fromarray(pixels).convert("RGBA").save(images / "103.png")
    (images / "104.jpg").write_bytes((images / "101.jpg").read_bytes()[:300])  # truncated JPEG
    (images / "notes.txt").write_text("ignored: not an image suffix")
    write_audio(audio / "a.mp3", make_signal(5.0, 44100, 2), 44100)
    write_audio(audio / "b.flac", make_signal(0.5, 8000, 6, seed=1), 8000)
    write_audio(audio / "c.wav", make_signal(2.0, 96000, seed=2), 96000)
    (audio / "empty.mp3").write_bytes(b"")
    (audio / "junk.wav").write_bytes(bytes(range(256)) * 8)
    weights = {
        "image": root / "image.safetensors",
        "audio": root / "audio.safetensors",
    }
    towers = {
        "image": _tower_file(IMAGE, weights["image"], 0),
        "audio": _tower_file(AUDIO, weights["audio"], 1, FRONTEND),
    }
    return {"root": root, "images": images, "audio": audio, "weights": weights, "towers": towers}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return dict(data)


def test_embed_images(files, tmp_path, capsys):
    out = tmp_path / "images.npz"
    code = main(["embed", IMAGE, str(files["images"]), "--out", str(out), "--weights", str(files["weights"]["image"]),
                 "--batch-size", "2"])
    err = capsys.readouterr().err
    assert code == 0
    data = _read_npz(out)
    assert data["keys"].tolist() == ["101", "103", "102"]  # sorted paths: 101.jpg, 103.png, nested/102.png
    assert data["embeddings"].dtype == np.float32 and data["embeddings"].shape == (3, soundingearth_zoo.EMBED_DIM)
    tower = files["towers"]["image"]
    with torch.no_grad():
        expected = tower(torch.stack([eval_transform(tower)(load_image(p)) for p in data["paths"]]))
    np.testing.assert_allclose(data["embeddings"], expected.numpy(), atol=1e-5, rtol=1e-4)
    assert "skipped 1 of 4" in err and "104.jpg" in err and "truncated" in err.lower()


def test_embed_audio_reads_the_frontend_of_the_weights(files, tmp_path, capsys):
    out = tmp_path / "sub" / "audio.npz"
    code = main(["embed", f"{AUDIO}.contrastive_resnet18", str(files["audio"]), "--out", str(out),
                 "--weights", str(files["weights"]["audio"]), "--max-windows", "3"])
    err = capsys.readouterr().err
    assert code == 0
    data = _read_npz(out)
    assert data["keys"].tolist() == ["a", "b", "c"]
    tower = files["towers"]["audio"]
    with torch.no_grad():
        expected = torch.stack([tower(read_windows(p, FRONTEND, max_windows=3)).mean(0) for p in data["paths"]])
    np.testing.assert_allclose(data["embeddings"], expected.numpy(), atol=1e-5, rtol=1e-4)
    assert "skipped 2 of 5" in err and "empty.mp3" in err and "junk.wav" in err


@pytest.mark.parametrize("case", ["missing", "no_inputs", "all_unreadable", "unknown_model", "corrupt_weights"])
def test_embed_input_errors_exit_2_with_one_line(files, tmp_path, capsys, case):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "bad.safetensors").write_bytes(b"not a weights file")
    model, inputs, extra = IMAGE, [str(files["images"] / "101.jpg")], ["--no-pretrained"]
    if case == "missing":
        inputs.append(str(tmp_path / "nope.jpg"))
    elif case == "no_inputs":
        inputs = [str(tmp_path / "empty_dir")]
    elif case == "all_unreadable":
        inputs = [str(files["images"] / "104.jpg")]
    elif case == "unknown_model":
        model = "resnet18"
    else:
        extra = ["--weights", str(tmp_path / "bad.safetensors")]
    out = tmp_path / "out.npz"
    assert main(["embed", model, *inputs, "--out", str(out), *extra]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("soundingearth-zoo embed: error:")
    assert not out.exists()


def _search(files, query: Path, candidates: Path, capsys, top_k: int) -> list[list[str]]:
    code = main(["search", str(query), str(candidates), "--model", f"{IMAGE}.batch_triplet", "--top-k", str(top_k),
                 "--image-weights", str(files["weights"]["image"]), "--audio-weights", str(files["weights"]["audio"])])
    assert code == 0
    return [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]


def test_search_ranks_by_distance_both_ways(files, capsys):
    image, audio = files["towers"]["image"], files["towers"]["audio"]
    query = files["images"] / "101.jpg"
    rows = _search(files, query, files["audio"], capsys, top_k=2)
    with torch.no_grad():
        q = image(eval_transform(image)(load_image(query))[None])
        sounds = sorted(p for p in files["audio"].iterdir() if p.stem in "abc")
        emb = torch.stack([audio(read_windows(p, FRONTEND)).mean(0) for p in sounds])
    distances = torch.cdist(q, emb)[0]
    expected = [sounds[i] for i in distances.argsort()[:2]]
    assert [row[0] for row in rows] == ["1", "2"]
    assert [Path(row[2]) for row in rows] == expected
    np.testing.assert_allclose([float(row[1]) for row in rows], distances.sort().values[:2].numpy(), atol=1e-3)

    rows = _search(files, files["audio"] / "a.mp3", files["images"], capsys, top_k=10)
    assert len(rows) == 3 and {Path(row[2]).stem for row in rows} == {"101", "102", "103"}
    assert [float(row[1]) for row in rows] == sorted(float(row[1]) for row in rows)
