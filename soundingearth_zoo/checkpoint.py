"""Training checkpoints: written atomically, read without unpickling code.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` can read:

- ``format``: ``CHECKPOINT_FORMAT``
- ``config``: the training config as a dict of plain values; ``config["image_model"]`` and
  ``config["audio_model"]`` are timm names (``soundingearth_resnet18``, ``soundingearth_audio_resnet18``) and
  ``config["objective"]`` one of ``models.OBJECTIVES``
- ``frontend``: the audio front-end config as a dict (``audio.FrontendConfig.to_dict()``)
- ``image_state_dict`` / ``audio_state_dict``: the towers' timm state dicts
- ``step``, ``epoch`` and whatever else training needs to resume exactly (optimizer, RNG states, ...)
- ``metrics``: optional dict of evaluation results measured by the run
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path
from .errors import InputError

CHECKPOINT_FORMAT = "soundingearth-zoo/train-checkpoint/1"


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through ``atomic.atomic_path``, so a run killed mid-write leaves the previous checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True``; anything that is not one is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # an untrusted pickle or a corrupt file: refuse, say why in one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path} is not a readable plain checkpoint ({first})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a soundingearth-zoo training checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt
