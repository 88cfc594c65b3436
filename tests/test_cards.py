"""Weight cards stay in step with the registry; the ``list`` and ``info`` verbs."""
from __future__ import annotations

import pytest
import timm

from soundingearth_zoo import cli
from soundingearth_zoo.cards import (
    METRICS_END,
    METRICS_START,
    STATUS_END,
    STATUS_START,
    card_metrics,
    card_summary,
    cards_dir,
    load_card,
)

PRETRAINED = timm.list_pretrained("soundingearth*")


def test_one_card_per_registered_weight():
    cards = {p.stem for p in cards_dir().glob("*.md")}
    assert cards == set(PRETRAINED)


@pytest.mark.parametrize("name", PRETRAINED)
def test_card_matches_registry(name):
    card = load_card(name)
    cfg = timm.models.get_pretrained_cfg(name)
    data = card.data.to_dict()
    assert data["library_name"] == "timm"
    assert data["license"] == cfg.license
    assert "timm" in data["tags"] and "soundingearth" in data["datasets"]
    text = card.text
    assert text.lstrip().startswith(f"# {name}\n")
    assert f"`{cfg.hf_hub_id}`" in text
    for section in ("## Training data and its licences", "## Intended use", "## Limitations", "## How to reproduce",
                    "## Reference numbers from the paper (not measured on this weight)", "## Metrics of this weight"):
        assert section in text, section
    for marker in (METRICS_START, METRICS_END, STATUS_START, STATUS_END):
        assert text.count(marker) == 1, marker
    assert card_summary(card).startswith("Not trained yet")
    # no weight has been trained on the SoundingEarth archive yet, so no card may claim a measured number
    assert card_metrics(card) == "No run has measured this weight yet."


def test_list_prints_every_weight(capsys):
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.split()
    assert sorted(lines) == sorted(PRETRAINED)
    firsts = {}
    for line in lines:
        firsts.setdefault(line.split(".")[0], line)
    assert firsts == {name: timm.models.get_pretrained_cfg(name).architecture + "." + timm.models.get_pretrained_cfg(
        name).tag for name in firsts}


def test_info_prints_cfg_and_card(capsys):
    assert cli.main(["info", "soundingearth_resnet18"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("soundingearth_resnet18.batch_triplet\n")
    assert 'hf_hub_id: "soundingearth-zoo/soundingearth_resnet18.batch_triplet"' in out
    assert "Not trained yet" in out


@pytest.mark.parametrize("name", ["soundingearth_resnet34", "soundingearth_resnet18.simclr"])
def test_info_unknown_name_is_one_line_exit_2(capsys, name):
    assert cli.main(["info", name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown" in err
