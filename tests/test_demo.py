"""The demo end to end on a small archive: training learns (held-out retrieval well above chance), the exported
towers reload with plain timm to the same embeddings, and the report says so."""
from __future__ import annotations

import json

import pytest

from soundingearth_zoo.demo import DemoSettings, run_demo, summary

# Smaller than the demo's defaults to fit a test's budget: 120 pairs (84 train, 24 test), 48 px images and
# 32x32 log-mel windows (the towers stay the real ResNet-18s), 80 steps. Over seeds 0-2 this gave Recall@1 of
# 4/24 to 6/24 in each direction and median ranks of 3 to 4 (chance: 1/24 and 12.5).
SETTINGS = DemoSettings(num_items=120, image_size=48, window=32, epochs=16, batch_size=16)


@pytest.mark.slow
def test_demo_learns_exports_and_reloads(tmp_path):
    report = run_demo(tmp_path, SETTINGS)

    assert report == json.loads((tmp_path / "report.json").read_text())
    retrieval = report["test_retrieval"]
    assert retrieval["num_pairs"] == report["data"]["pairs_per_split"]["test"] == 24
    chance = retrieval["chance"]["recall@1"]
    for direction in ("image_to_audio", "audio_to_image"):
        recall = retrieval[direction]["recall@1"]
        assert recall >= 3 * chance, f"{direction} Recall@1 {recall:.3f} is not well above chance {chance:.3f}"
        assert retrieval[direction]["median_rank"] < retrieval["chance"]["median_rank"] / 2
    assert report["reload"]["same_embeddings"], report["reload"]
    assert set(report["export"]) == {"image", "audio"}
    assert {"make_data", "prepare", "train", "evaluate", "export", "reload", "total"} <= set(report["timings_s"])
    assert "chance" in summary(report)
    # The exported cards show what this run measured.
    card = (tmp_path / "export" / "soundingearth_resnet18.batch_triplet" / "README.md").read_text()
    assert f"{100 * retrieval['image_to_audio']['recall@1']:.2f} %" in card

