"""Reports: atomic writes, plots, and the weight cards' metrics block written from evaluation JSON."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from soundingearth_zoo import reports
from soundingearth_zoo.cards import METRICS_END, METRICS_START, cards_dir
from soundingearth_zoo.cli import main
from soundingearth_zoo.retrieval import retrieval_metrics


@pytest.fixture
def retrieval_json(tmp_path):
    rng = np.random.default_rng(0)
    results = retrieval_metrics(rng.normal(size=(50, 8)), rng.normal(size=(50, 8)),
                                coords=rng.uniform(-50, 50, size=(50, 2)), ks=(1, 10, 100))
    return reports.write_json(tmp_path / "run" / "retrieval.json", results), results


@pytest.fixture
def card(tmp_path):
    return shutil.copy(cards_dir() / "soundingearth_resnet18.batch_triplet.md", tmp_path / "card.md")


def _outside_block(text: str) -> tuple[str, str]:
    return text[: text.index(METRICS_START)], text[text.index(METRICS_END):]


def test_card_metrics_replaces_only_the_block(card, retrieval_json, capsys):
    json_path, results = retrieval_json
    before = open(card, encoding="utf-8").read()
    command = "soundingearth-zoo evaluate retrieval --model run/checkpoint.pt --archive A --out run"
    assert main(["card-metrics", str(card), str(json_path), "--command", command]) == 0
    after = open(card, encoding="utf-8").read()
    assert _outside_block(after) == _outside_block(before)
    block = after[after.index(METRICS_START):after.index(METRICS_END)]
    assert "No run has measured" not in block
    assert f"{100 * results['image_to_audio']['recall@10']:.2f} %" in block
    assert f"{results['audio_to_image']['median_rank']:g}" in block
    assert f"Measured by: `{command}`" in block
    # Written by a command, so writing it again gives the same card.
    assert main(["card-metrics", str(card), str(json_path), "--command", command]) == 0
    assert open(card, encoding="utf-8").read() == after


def test_card_metrics_errors_are_one_line(tmp_path, card, retrieval_json, capsys):
    json_path, _ = retrieval_json
    no_markers = tmp_path / "plain.md"
    no_markers.write_text("# a card without a metrics block\n")
    other_json = tmp_path / "other.json"
    other_json.write_text(json.dumps({"accuracy": 0.5}))
    for argv in ([str(no_markers), str(json_path)], [str(card), str(other_json)], [str(card), "missing.json"]):
        assert main(["card-metrics", *argv, "--command", "x"]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_to_json_drops_per_query_arrays(retrieval_json):
    json_path, results = retrieval_json
    saved = json.loads(json_path.read_text())
    assert "ranks" not in saved["image_to_audio"]
    assert saved["image_to_audio"]["recall@10"] == results["image_to_audio"]["recall@10"]
    assert isinstance(results["image_to_audio"]["ranks"], np.ndarray)  # the caller's dict is left as it was


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "report.md"
    reports.write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with reports.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_plots_are_pngs(tmp_path, retrieval_json):
    _, results = retrieval_json
    assert reports.plot_recall_at_k(results, tmp_path / "recall.png").read_bytes().startswith(b"\x89PNG")
    rng = np.random.default_rng(1)
    rows = [{"key": str(k), "image": rng.uniform(size=(16, 16, 3)), "true_spectrogram": rng.normal(size=(8, 12)),
             "retrieved": [(str(j), rng.normal(size=(8, 12)), j == k) for j in range(3)]} for k in range(2)]
    assert reports.plot_gallery(rows, tmp_path / "gallery.png").read_bytes().startswith(b"\x89PNG")
