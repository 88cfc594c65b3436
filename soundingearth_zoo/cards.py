"""Weight cards: one Hugging Face model card per registered weight, and the ``list`` / ``info`` verbs.

The cards live in ``weights_cards/`` at the top of the repository (the wheel ships them inside the package). Each
is Markdown with YAML front matter as on the Hub, parsed with huggingface_hub's own ``ModelCard``. The block
between ``METRICS_START`` and ``METRICS_END`` holds only what a real run measured; it is written by a command,
never by hand.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
from huggingface_hub import ModelCard

from .errors import InputError
from .models import check_model_name, pretrained_tags

METRICS_START = "<!-- metrics:start -->"
METRICS_END = "<!-- metrics:end -->"
# The card's opening status paragraph (whether the weight exists, which run made it): export rewrites it.
STATUS_START = "<!-- status:start -->"
STATUS_END = "<!-- status:end -->"


def cards_dir() -> Path:
    """The folder of the weight cards: inside the installed package, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "weights_cards", here.parent / "weights_cards"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no weights_cards folder beside {here}")


def card_path(name: str) -> Path:
    """The card of ``model.tag`` (a bare model name means its default tag)."""
    check_model_name(name)
    if "." not in name:
        name = pretrained_tags(name)[0]
    return cards_dir() / f"{name}.md"


def load_card(name: str) -> ModelCard:
    path = card_path(name)
    if not path.is_file():
        raise InputError(f"no weight card for {name} (expected {path})")
    return ModelCard.load(path)


def _block(text: str, start_marker: str, end_marker: str) -> str:
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        return ""
    return text[start + len(start_marker) : end].strip()


def replace_block(text: str, start_marker: str, end_marker: str, body: str, where: str) -> str:
    """``text`` with what stands between the two markers replaced by ``body``; ``where`` names the card in the
    error when the markers are missing."""
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        raise InputError(f"{where} has no {start_marker} ... {end_marker} block")
    return f"{text[: start + len(start_marker)]}\n{body.strip()}\n{text[end:]}"


def card_summary(card: ModelCard) -> str:
    """The card's status paragraph: whether the weight exists yet, and which run made it."""
    return " ".join(_block(card.text, STATUS_START, STATUS_END).split())


def card_metrics(card: ModelCard) -> str:
    """The measured-metrics block of a card, without its markers."""
    return _block(card.text, METRICS_START, METRICS_END)


def cli_list(args: argparse.Namespace) -> int:
    """Every registered weight, ``name.tag`` per line, each model's default tag first."""
    weights = set(timm.list_pretrained("soundingearth*"))
    for name in timm.list_models("soundingearth*"):
        for name_tag in pretrained_tags(name):
            if name_tag in weights:
                print(name_tag)
    return 0


def cli_info(args: argparse.Namespace) -> int:
    name = check_model_name(args.name)
    if "." not in name:
        name = pretrained_tags(name)[0]
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    card = load_card(name)
    print(name)
    print(f"  summary: {card_summary(card)}")
    print(f"  card: {card_path(name)}")
    print("  pretrained_cfg:")
    for key, value in cfg.items():
        print(f"    {key}: {json.dumps(value)}")
    print("  measured metrics:")
    for line in card_metrics(card).splitlines():
        print(f"    {line}")
    return 0
