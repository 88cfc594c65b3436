"""Export of training checkpoints to Hub-ready folders, and ``push --dry-run``."""
from __future__ import annotations

import hashlib
import json

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
from _export_helpers import load_in_fresh_interpreter, randomize_, save_io, sha256_sums
from huggingface_hub import HfApi
from safetensors import safe_open

from soundingearth_zoo import export
from soundingearth_zoo.audio import FrontendConfig
from soundingearth_zoo.cards import METRICS_END, METRICS_START, STATUS_END, STATUS_START, card_path
from soundingearth_zoo.checkpoint import CHECKPOINT_FORMAT, save_atomic
from soundingearth_zoo.cli import main
from soundingearth_zoo.demo_data import make_demo_archive
from soundingearth_zoo.errors import InputError
from soundingearth_zoo.prepare import prepare_archive
from soundingearth_zoo.reports import card_metrics_section, to_json
from soundingearth_zoo.retrieval import retrieval_metrics
from soundingearth_zoo.train import TrainConfig, train

IMAGE = "soundingearth_resnet18.contrastive"
AUDIO = "soundingearth_audio_resnet18.contrastive_resnet18"
WEIGHTS = "model.safetensors"


def _retrieval_result() -> dict:
    """Retrieval metrics as ``evaluate retrieval`` writes them to JSON."""
    rng = np.random.default_rng(0)
    return to_json(retrieval_metrics(rng.standard_normal((20, 8)), rng.standard_normal((20, 8)), ks=(1, 5)))


def _write_checkpoint(path, **overrides):
    """A checkpoint in the schema of ``checkpoint.py``, from freshly created towers."""
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "config": {"image_model": "soundingearth_resnet18", "audio_model": "soundingearth_audio_resnet18",
                   "objective": "contrastive"},
        "frontend": FrontendConfig().to_dict(),
        "image_state_dict": timm.create_model(IMAGE).state_dict(),
        "audio_state_dict": timm.create_model(AUDIO).state_dict(),
        "step": 2,
        "epoch": 1.0,
        **overrides,
    }
    save_atomic(ckpt, path)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """The checkpoint of a one-step training run (contrastive objective) on a tiny synthetic archive."""
    tmp = tmp_path_factory.mktemp("run")
    archive = make_demo_archive(tmp / "archive", num_items=20, image_size=64, seconds=1.5)
    prepare_archive(archive, tmp / "prepared", workers=0, crop_size=32, max_frames=256)
    cfg = TrainConfig(objective="contrastive", data=str(tmp / "prepared"), out=str(tmp / "run"), batch_size=4,
                      max_steps=1, image_size=32, workers=0, channels_last=False)
    return train(cfg)


def test_export_of_a_training_run_loads_with_plain_timm_in_a_fresh_interpreter(trained_checkpoint, tmp_path, capsys):
    (tmp_path / "retrieval.json").write_text(json.dumps(_retrieval_result()))
    command = "soundingearth-zoo evaluate retrieval --model ckpt.pt --archive a --out r"
    argv = ["export", str(trained_checkpoint), str(tmp_path / "out"), "--results", str(tmp_path / "retrieval.json"),
            "--command", command]
    assert main(argv) == 0
    printed = capsys.readouterr().out

    # the trained towers, as plain PyTorch sees them: the registry's models with the checkpoint's state dicts
    ckpt = torch.load(trained_checkpoint, weights_only=True)
    folders = {"image": tmp_path / "out" / IMAGE, "audio": tmp_path / "out" / AUDIO}
    shapes = {"image": (2, 3, 64, 64), "audio": (2, 1, 128, 128)}
    jobs = []
    for role, folder in folders.items():
        tower = timm.create_model(folder.name.partition(".")[0])
        tower.load_state_dict(ckpt[f"{role}_state_dict"])
        jobs.append({"folder": str(folder), "io": str(save_io(tower, tmp_path / f"{role}.pt", shapes[role])),
                     "import_package": False})
    results = load_in_fresh_interpreter(jobs)
    for folder, result in zip(folders.values(), results, strict=True):
        assert result == {"max_abs_diff": pytest.approx(0.0, abs=1e-5), "class": "ResNet", "package_imported": False,
                          "hf_hub_id": f"soundingearth-zoo/{folder.name}"}

    report = json.loads((tmp_path / "out" / "export-report.json").read_text())
    assert report["source"]["sha256"] == hashlib.sha256(trained_checkpoint.read_bytes()).hexdigest()
    for role, folder in folders.items():
        assert sorted(p.name for p in folder.iterdir()) == ["README.md", "SHA256SUMS", "config.json", WEIGHTS]
        config = json.loads((folder / "config.json").read_text())
        registry = timm.models.get_pretrained_cfg(folder.name).to_dict()
        assert config["architecture"] == "resnet18" and config["num_classes"] == 128
        assert config["model_args"]["in_chans"] == {"image": 3, "audio": 1}[role]
        for key in ("hf_hub_id", "license", "paper_ids", "paper_name", "description", "tag", "mean", "std"):
            assert config["pretrained_cfg"][key] == json.loads(json.dumps(registry[key])), key
        # SHA256SUMS in sha256sum format, the same digests in the printed summary and in the report
        sums = sha256_sums(folder)
        assert (folder / "SHA256SUMS").read_text() == "".join(f"{d}  {n}\n" for n, d in sums.items())
        assert all(f"{d}  {n}" in printed for n, d in sums.items())
        assert report["towers"][role]["sha256"] == sums
        # the card: the weight's own, its status naming the run's data, its metrics block holding the measured
        # results, then the provenance
        card = (folder / "README.md").read_text()
        template = card_path(folder.name).read_text()
        assert card.startswith(template[: template.index(STATUS_START)])
        assert card[card.index(STATUS_END) :].startswith(template[template.index(STATUS_END) : template.index(METRICS_START)])
        assert "Exported from a training run on" in card and "Not trained yet" not in card
        assert card_metrics_section(_retrieval_result(), command) in card and "No run has measured" not in card
        assert card.index(METRICS_END) < card.index(report["source"]["sha256"])

    # the image tower's input size is the run's (32 px here), so timm's data config resizes to what it learnt on
    image_cfg = json.loads((folders["image"] / "config.json").read_text())["pretrained_cfg"]
    assert image_cfg["input_size"] == [3, 32, 32]
    assert json.loads((folders["audio"] / "config.json").read_text())["pretrained_cfg"]["input_size"] == [1, 128, 128]

    config = json.loads((folders["audio"] / "config.json").read_text())
    assert config["audio_frontend"] == ckpt["frontend"]
    with safe_open(folders["audio"] / WEIGHTS, framework="pt") as f:
        assert FrontendConfig.from_json(f.metadata()["soundingearth_frontend"]).to_dict() == ckpt["frontend"]
    assert "audio_frontend" not in json.loads((folders["image"] / "config.json").read_text())


def test_card_without_metrics_keeps_the_cards_block():
    card = export.build_card(IMAGE, "", "Exported for a test.", "Made by a test run.")
    template = card_path(IMAGE).read_text()
    status = template[template.index(STATUS_START) : template.index(STATUS_END) + len(STATUS_END)]
    expected = template.replace(status, f"{STATUS_START}\nMade by a test run.\n{STATUS_END}")
    assert card == f"{expected.rstrip()}\n\n## Provenance of these files\n\nExported for a test.\n"
    assert "Not trained yet" not in card


def test_measured_metrics_from_result_files(tmp_path):
    result = _retrieval_result()
    (tmp_path / "retrieval.json").write_text(json.dumps(result))
    command = "soundingearth-zoo evaluate retrieval --out x"
    measured = export.measured_metrics(None, [tmp_path / "retrieval.json"], command)
    assert measured == card_metrics_section(result, command)
    assert export.measured_metrics(None) == ""
    with pytest.raises(InputError, match="--command"):
        export.measured_metrics(None, [tmp_path / "retrieval.json"])
    in_checkpoint = {"retrieval": {**result, "command": command}}
    assert export.measured_metrics(in_checkpoint) == card_metrics_section(result, command)
    with pytest.raises(InputError, match="command that measured"):
        export.measured_metrics(result)  # a result in a checkpoint must say how it was measured


def test_export_of_a_checkpoint_that_does_not_fit_is_one_line(tmp_path, capsys):
    bad = {"audio_state_dict": {**timm.create_model(AUDIO).state_dict(), "layer2.0.bn1.weight": torch.ones(3)}}
    _write_checkpoint(tmp_path / "bad.pt", **bad)
    assert main(["export", str(tmp_path / "bad.pt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layer2.0.bn1.weight" in err and "(3,)" in err
    assert not (tmp_path / "out").exists()

    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    assert main(["export", str(tmp_path / "other.pt"), str(tmp_path / "out")]) == 2
    assert "not a soundingearth-zoo training checkpoint" in capsys.readouterr().err


def _small_tower(seed: int) -> export.Tower:
    model = randomize_(timm.create_model("resnet18", channels=(8, 8, 8, 8), num_classes=128,
                                         pretrained_cfg=timm.models.get_pretrained_cfg(IMAGE)), seed)
    return export.Tower(IMAGE, model, "resnet18")


def _source(tmp_path):
    path = tmp_path / "source.bin"
    path.write_bytes(b"a checkpoint")
    return path


def test_export_replaces_a_folder_atomically(tmp_path, monkeypatch):
    source = _source(tmp_path)
    folder = export.export_towers({"image": _small_tower(0)}, tmp_path, source, "first", "status")["image"]
    first = sha256_sums(folder)

    def fail_midway(tower, tmp, card):
        (tmp / WEIGHTS).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(export, "write_tower", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        export.export_towers({"image": _small_tower(1)}, tmp_path, source, "second", "status")
    assert sha256_sums(folder) == first
    monkeypatch.undo()

    export.export_towers({"image": _small_tower(1)}, tmp_path, source, "third", "status")
    assert sha256_sums(folder)[WEIGHTS] != first[WEIGHTS]
    assert "third" in (folder / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export-report.json", IMAGE, "source.bin"]


@pytest.fixture
def offline_hub(monkeypatch):
    """A mirror endpoint, and a Hub that fails the test if anything is sent."""
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hub.mirror.example")

    def refuse(*args, **kwargs):
        raise AssertionError("the dry run contacted the Hub")

    for method in ("create_repo", "upload_folder", "create_commit", "preupload_lfs_files"):
        monkeypatch.setattr(HfApi, method, refuse)


def test_push_dry_run_lists_files_and_target(tmp_path, capsys, offline_hub):
    folder = export.export_towers({"image": _small_tower(0)}, tmp_path, _source(tmp_path), "p", "status")["image"]
    assert main(["push", str(folder), "--repo-id", "my-org/my-weights", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    sums = sha256_sums(folder)
    sums["SHA256SUMS"] = export.sha256_file(folder / "SHA256SUMS")
    listed = {line.split()[2]: (line.split()[0], int(line.split()[1])) for line in lines[:-1]}
    assert listed == {name: (digest, (folder / name).stat().st_size) for name, digest in sums.items()}
    assert "https://hub.mirror.example/my-org/my-weights" in lines[-1] and "nothing sent" in lines[-1]

    (folder / "README.md").write_text("edited after export")
    assert main(["push", str(folder), "--repo-id", "my-org/my-weights", "--dry-run"]) == 2
    assert "README.md has changed since export" in capsys.readouterr().err
    assert main(["push", str(folder), "--repo-id", "not a repo id", "--dry-run"]) == 2
    assert main(["push", str(tmp_path), "--repo-id", "my-org/my-weights", "--dry-run"]) == 2  # not a tower folder


def test_push_without_a_token_says_how_to_log_in(tmp_path, offline_hub, monkeypatch):
    folder = export.export_towers({"image": _small_tower(0)}, tmp_path, _source(tmp_path), "p", "status")["image"]
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(InputError, match="HF_TOKEN"):
        export.push_folder(folder, "my-org/my-weights")
