"""Conversion of checkpoints saved by the authors' released training code into this package's towers.

Their checkpoint is the ``state_dict`` of a wrapper with ``img_encoder.module_list.0.*`` and
``snd_encoder.module_list.0.*`` (and ``loss_function.*`` where the loss had parameters, not part of the towers).
Each encoder is a torchvision-style ResNet whose parameter names timm's ResNet shares (``conv1``, ``bn1``,
``layer1``..``layer4``, ``downsample.0/1``), followed by ``fc``, a 1x1 convolution to the embedding. The image encoder
applies it to the feature map and then averages over space, the audio encoder averages first: by linearity both are
timm's global average pool followed by a linear ``fc`` with the kernel's weights.

The architecture is read from the tensors: block type from the presence of ``conv3``, depth from the number of
blocks per stage, stage widths (timm's ``channels``) from each stage's first convolution, stem width from ``conv1``.
torchvision's 64-wide stem gives towers that plain timm loads; the 32-wide stem of the authors' last revision needs
the variant registered in ``models.STEM32_MODELS``. The file is read with ``torch.load(weights_only=True)`` only.
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import timm
import torch

from .audio import FrontendConfig
from .errors import InputError
from .export import Tower, export_towers, load_weights, print_export, sha256_file
from .models import EMBED_DIM, IMAGE_MODELS, OBJECTIVES, STEM32_MODELS, audio_partner, check_model_name

__all__ = [
    "ENCODER_PREFIXES",
    "Layout",
    "cli_convert",
    "convert_original",
    "load_original",
    "original_towers",
    "read_layout",
]

#: Key prefix of each tower in the authors' wrapper.
ENCODER_PREFIXES = {"image": "img_encoder.module_list.0.", "audio": "snd_encoder.module_list.0."}
IGNORED_PREFIX = "loss_function."
#: ``(bottleneck, blocks per stage) -> backbone`` of the depths this package has towers for.
BACKBONES = {(False, (2, 2, 2, 2)): "resnet18", (True, (3, 4, 6, 3)): "resnet50"}
_IN_CHANS = {"image": 3, "audio": 1}


def load_original(path: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """The authors' checkpoint split into ``{"image": state, "audio": state}`` with the wrapper prefixes removed.
    Only a plain state dict is read (``weights_only=True``); a key of no tower is an InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an untrusted pickle (custom classes, code) or a corrupt file: refuse, one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path} is not a plain state dict readable with weights_only=True ({first})") from None
    if not isinstance(state, Mapping):
        raise InputError(f"{path} holds a {type(state).__name__}, not a state dict")
    towers: dict[str, dict[str, torch.Tensor]] = {role: {} for role in ENCODER_PREFIXES}
    for key, value in state.items():
        if str(key).startswith(IGNORED_PREFIX):
            continue
        role = next((r for r, prefix in ENCODER_PREFIXES.items() if str(key).startswith(prefix)), None)
        if role is None or not isinstance(value, torch.Tensor):
            raise InputError(f"{path}: unexpected key {key} (not a tensor of img_encoder/snd_encoder.module_list.0)")
        towers[role][key[len(ENCODER_PREFIXES[role]) :]] = value
    for role, prefix in ENCODER_PREFIXES.items():
        if not towers[role]:
            raise InputError(f"{path} has no {prefix}* keys: not a checkpoint of the authors' code")
    return towers


class Layout(NamedTuple):
    """One of the authors' encoders as a timm model: ``create_model(architecture, **model_args)``."""

    backbone: str
    architecture: str
    model_args: dict[str, Any]


def _tensor(state: Mapping[str, torch.Tensor], key: str, prefix: str) -> torch.Tensor:
    if key not in state:
        raise InputError(f"missing key {prefix}{key}")
    if state[key].ndim != 4:
        raise InputError(f"{prefix}{key} has shape {tuple(state[key].shape)}, expected a convolution kernel")
    return state[key]


def read_layout(role: str, state: Mapping[str, torch.Tensor]) -> Layout:
    """The architecture of one encoder, read from its tensors' names and shapes."""
    prefix = ENCODER_PREFIXES[role]
    stem_width, in_chans, *kernel = _tensor(state, "conv1.weight", prefix).shape
    if kernel != [7, 7] or in_chans != _IN_CHANS[role]:
        raise InputError(f"{prefix}conv1.weight: expected a 7x7 stem on {_IN_CHANS[role]} channels, got "
                         f"{tuple(state['conv1.weight'].shape)}")
    bottleneck = "layer1.0.conv3.weight" in state
    layers = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    backbone = BACKBONES.get((bottleneck, layers))
    if backbone is None or (role == "audio" and backbone != "resnet18"):
        block = "Bottleneck" if bottleneck else "BasicBlock"
        raise InputError(f"{prefix}*: no {role} tower here is a {block} ResNet with {layers} blocks per stage")
    fc = _tensor(state, "fc.weight", prefix)
    if fc.shape[0] != EMBED_DIM or fc.shape[2:] != (1, 1):
        raise InputError(f"{prefix}fc.weight has shape {tuple(fc.shape)}, expected a 1x1 conv to {EMBED_DIM}-d")
    channels = [_tensor(state, f"layer{i}.0.conv1.weight", prefix).shape[0] for i in range(1, 5)]
    model_args = {"in_chans": in_chans, "num_classes": EMBED_DIM, "channels": channels}
    if stem_width == 64:
        return Layout(backbone, backbone, model_args)
    if stem_width == 32:
        return Layout(backbone, STEM32_MODELS[backbone], {**model_args, "stem_width": 32})
    raise InputError(f"{prefix}conv1.weight: a {stem_width}-wide stem is neither torchvision's 64 nor the 32 of the "
                     "authors' last revision")


def original_towers(
    states: Mapping[str, Mapping[str, torch.Tensor]], objective: str = OBJECTIVES[0]
) -> dict[str, Tower]:
    """Build and load the timm towers for the authors' encoders (``load_original``'s output). The checkpoint does
    not record its objective: ``objective`` picks the weight tag (and with it the card and Hub id)."""
    layouts = {role: read_layout(role, state) for role, state in states.items()}
    image_model = next(name for name, backbone in IMAGE_MODELS.items() if backbone == layouts["image"].backbone)
    image_name = check_model_name(f"{image_model}.{objective}")
    names = {"image": image_name, "audio": audio_partner(image_name)}
    towers = {}
    for role, name in names.items():
        layout = layouts[role]
        pretrained_cfg = timm.models.get_pretrained_cfg(name)
        model = timm.create_model(layout.architecture, pretrained_cfg=pretrained_cfg, **layout.model_args)
        # the 1x1 conv head on pooled features is timm's linear fc
        state = {**states[role], "fc.weight": states[role]["fc.weight"].flatten(1)}
        load_weights(model, state, "original checkpoint", prefix=ENCODER_PREFIXES[role])
        frontend = FrontendConfig() if role == "audio" else None
        towers[role] = Tower(name, model.eval(), layout.architecture, frontend)
    return towers


def convert_original(
    checkpoint: str | os.PathLike, out: str | os.PathLike, objective: str = OBJECTIVES[0]
) -> dict[str, Path]:
    """Convert the authors' checkpoint and export its towers as ``export`` does: ``{"image": ..., "audio": ...}``."""
    states = load_original(checkpoint)
    towers = original_towers(states, objective)
    layouts = "; ".join(
        f"{role}: {tower.architecture} with model_args {json.dumps(timm.models.get_model_args(tower.model))}"
        for role, tower in towers.items()
    )
    digest = sha256_file(checkpoint)
    provenance = (
        f"Converted by `soundingearth-zoo convert-original` from a checkpoint of the authors' released training code, "
        f"`{Path(checkpoint).name}` (sha256 `{digest}`); {layouts}. That checkpoint records neither "
        f"its objective (the tag `{objective}` was given to the conversion) nor its audio front end (this package's "
        f"default `FrontendConfig` is attached)."
    )
    status = (
        "Converted from the authors' released checkpoint (see the provenance below); the tag and the audio front end "
        "are this conversion's assumptions, not recorded in that checkpoint."
    )
    return export_towers(towers, out, checkpoint, provenance, status, source_sha256=digest)


def cli_convert(args: argparse.Namespace) -> int:
    print_export(convert_original(args.checkpoint, args.out, objective=args.objective))
    return 0
