"""``evaluate retrieval`` from a pair of towers and an archive split: embeddings, skipped items, the gallery."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from soundingearth_zoo.archive import read_metadata
from soundingearth_zoo.augment import eval_image_transform
from soundingearth_zoo.cli import main
from soundingearth_zoo.demo_data import make_demo_archive
from soundingearth_zoo.images import load_image
from soundingearth_zoo.pair import AudioVisualPair
from soundingearth_zoo.retrieval import embed_archive_split


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """30 items (6 in the test split) of 64 px tiles and 2 s clips; one test item's audio is truncated to junk."""
    root = make_demo_archive(tmp_path_factory.mktemp("archive"), num_items=30, seed=0, image_size=64, seconds=2.0)
    broken = next(item.audio for item in read_metadata(root, "test") if item.key == 1012)
    broken.write_bytes(broken.read_bytes()[:40])
    return root


def test_cli_from_model_and_archive(archive, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "retrieval", "--model", "soundingearth_resnet18", "--no-pretrained", "--archive",
                 str(archive), "--split", "test", "--ks", "1", "5", "--gallery-size", "2", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "retrieval.json").read_text())
    assert results["num_pairs"] == 5  # 6 test items, one unreadable
    assert list(results["source"]["skipped"]) == ["1012"]
    assert "1012" in capsys.readouterr().err
    assert "nearest_km@5" in results["image_to_audio"]  # coordinates come from the archive
    ranks = (out / "ranks.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in ranks[1:]] == ["1002", "1005", "1015", "1022", "1025"]
    for name in ("recall_at_k.png", "gallery.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")


def test_embeddings_are_the_pairs_own(archive):
    torch.manual_seed(0)
    pair = AudioVisualPair.from_pretrained("soundingearth_resnet18", pretrained=False)
    embedded = embed_archive_split(pair, archive, "test", batch_size=2)
    assert embedded.keys == ["1002", "1005", "1015", "1022", "1025"]
    assert list(embedded.skipped) == [1012]
    item = embedded.items[2]
    image = eval_image_transform(from_tile=True)(load_image(item.image))
    with torch.inference_mode():
        torch.testing.assert_close(embedded.image_emb[2], pair.encode_image(image)[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(embedded.audio_emb[2], pair.encode_audio(item.audio)[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(embedded.coords[2], (item.latitude, item.longitude))
