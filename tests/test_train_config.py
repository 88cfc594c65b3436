"""The training config: presets, files, typed command-line overrides, and the data order it fixes."""
from __future__ import annotations

import json

import pytest

from soundingearth_zoo.cli import main
from soundingearth_zoo.errors import InputError
from soundingearth_zoo.models import IMAGE_MODELS, OBJECTIVES
from soundingearth_zoo.train import PRESETS, TrainConfig, epoch_batches, load_config


def test_presets_are_the_papers_six_runs():
    assert len(PRESETS) == len(IMAGE_MODELS) * len(OBJECTIVES) == 6
    runs = {(cfg.image_model, cfg.objective) for cfg in PRESETS.values()}
    assert runs == {(model, objective) for model in IMAGE_MODELS for objective in OBJECTIVES}
    for cfg in PRESETS.values():
        assert (cfg.batch_size, cfg.lr, cfg.epochs, cfg.weight_decay) == (256, 1e-3, 300, 0.0)
    assert PRESETS["resnet50_contrastive"].image_model == "soundingearth_resnet50"


def test_overrides_are_typed_by_the_fields():
    cfg = TrainConfig().with_overrides(
        ["epochs=3", "lr=2e-4", "margin=1", "compile=true", "max_steps=null", "data=123", "frontend={n_mels: 64}"]
    )
    assert (cfg.epochs, cfg.lr, cfg.margin, cfg.compile, cfg.max_steps) == (3, 2e-4, 1.0, True, None)
    assert isinstance(cfg.margin, float)
    assert cfg.data == "123"  # a str field keeps the text as written
    assert cfg.frontend == {"n_mels": 64}
    assert TrainConfig().with_overrides(["max_steps=10"]).max_steps == 10


@pytest.mark.parametrize(
    "override, message",
    [
        ("epoch=3", "unknown config key 'epoch'"),
        ("epochs=three", "expects <class 'int'>"),
        ("epochs=1.5", "expects <class 'int'>"),
        ("compile=1", "expects <class 'bool'>"),
        ("epochs", "not of the form key=value"),
        ("objective=simclr", "objective must be one of"),
        ("image_model=resnet18", "image_model must be one of"),
        ("batch_size=0", "batch_size must be at least 1"),
        ("frontend={n_mel: 64}", "unknown audio front-end settings: n_mel"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(InputError, match=message) as err:
        TrainConfig().with_overrides([override])
    assert "\n" not in str(err.value)


def test_preset_then_file_then_overrides(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("epochs: 7\nbatch_size: 64\n")
    cfg = load_config(yaml_file, preset="resnet50_naive_triplet", overrides=["batch_size=32"])
    assert (cfg.image_model, cfg.objective, cfg.epochs, cfg.batch_size) == (
        "soundingearth_resnet50",
        "naive_triplet",
        7,
        32,
    )
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"objective": "contrastive", "temperature": 0.07}))
    assert load_config(json_file).temperature == 0.07
    with pytest.raises(InputError, match="unknown preset"):
        load_config(preset="resnet34_batch_triplet")
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    with pytest.raises(InputError, match="unknown config key"):
        load_config(tmp_path / "bad.yaml")


def test_saved_config_loads_back_unchanged(tmp_path):
    cfg = PRESETS["resnet18_contrastive"].with_overrides(["frontend={n_mels: 64}", "max_steps=5", "out=x"])
    cfg.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_cli_reports_a_bad_override_in_one_line(capsys):
    assert main(["train", "epochs=many"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "epochs" in err


def test_epoch_batches_depend_only_on_seed_and_epoch():
    one = epoch_batches(50, 8, seed=3, epoch=1)
    assert one == epoch_batches(50, 8, seed=3, epoch=1)
    assert one != epoch_batches(50, 8, seed=3, epoch=2) and one != epoch_batches(50, 8, seed=4, epoch=1)
    assert len(one) == 50 // 8 and all(len(b) == 8 for b in one)
    assert len({i for batch in one for i in batch}) == 48  # no item twice in an epoch
    # Two ranks hold the halves of each global batch, in rank order.
    halves = [epoch_batches(50, 8, seed=3, epoch=1, rank=r, world_size=2) for r in range(2)]
    assert [a + b for a, b in zip(*halves)] == one
    with pytest.raises(InputError, match="not divisible"):
        epoch_batches(50, 9, seed=0, epoch=0, world_size=2)
