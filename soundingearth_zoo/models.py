"""SoundingEarth towers as timm ResNets, with their pretrained-weight registry.

One file holds the family, in the shape of timm's own model files: ``_cfg`` builds a pretrained config,
``default_cfgs`` lists every weight the paper's runs produce, and the entry points registered with timm build
the towers with timm's ``build_model_with_cfg``. Importing this module registers the models.

The towers are plain timm ``ResNet``s whose classifier is the 128-d embedding head (global average pool, then a
linear layer), so ``num_classes=N`` swaps the embedding for a fresh classifier, ``features_only=True`` gives the
feature pyramid, and every other timm facility applies unchanged.
"""
from __future__ import annotations

from typing import Any

import timm
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    get_arch_pretrained_cfgs,
    register_model,
    resolve_pretrained_cfg,
)
from timm.models.resnet import BasicBlock, Bottleneck, ResNet, downsample_conv
from torch import nn

from .errors import InputError

__all__ = [
    "HF_HUB_NAMESPACE",
    "EMBED_DIM",
    "OBJECTIVES",
    "IMAGE_MODELS",
    "AUDIO_MODEL",
    "WeightsUnavailableError",
    "audio_partner",
    "check_model_name",
    "hub_id",
    "pretrained_tags",
]

#: The Hugging Face Hub organisation that holds one repository per published tower.
HF_HUB_NAMESPACE = "soundingearth-zoo"
#: Dimension of the shared image-audio embedding space (the paper's 128).
EMBED_DIM = 128
#: The paper's pre-training objectives (Table VII); the first is the default tag.
OBJECTIVES = ("batch_triplet", "contrastive", "naive_triplet")
#: Image towers, keyed by timm name, with the backbone each is built on.
IMAGE_MODELS = {"soundingearth_resnet18": "resnet18", "soundingearth_resnet50": "resnet50"}
#: The audio tower, trained jointly with one image tower per run.
AUDIO_MODEL = "soundingearth_audio_resnet18"

PAPER_ID = "arXiv:2108.00688"
PAPER_NAME = "Self-supervised Audiovisual Representation Learning for Remote Sensing Data"
ORIGIN_URL = "https://github.com/khdlr/SoundingEarth"
# The weights derive from Google Earth imagery and Creative Commons field recordings of many authors; the weight
# cards spell out the terms. "other" is the Hub's label for a licence that is not one standard identifier.
WEIGHTS_LICENSE = "other"

IMAGE_INPUT_SIZE = (3, 192, 192)
AUDIO_INPUT_SIZE = (1, 128, 128)
_OBJECTIVE_TEXT = {
    "batch_triplet": "the batch triplet loss (paper Eq. 3, margin 1)",
    "contrastive": "the contrastive InfoNCE loss (paper ablation, Table VII)",
    "naive_triplet": "the naive triplet loss (paper Eq. 2, one negative per anchor)",
}


class WeightsUnavailableError(InputError, RuntimeError):
    """A registered weight could not be fetched from the Hub nor found in the local cache."""


def hub_id(model_name: str, tag: str) -> str:
    """The Hub repository of one tower: ``<namespace>/<model>.<tag>``, as timm names its own weights."""
    return f"{HF_HUB_NAMESPACE}/{model_name}.{tag}"


def audio_partner(image_model: str) -> str:
    """The audio tower trained in the same run as an image tower, e.g.
    ``soundingearth_resnet18.contrastive`` -> ``soundingearth_audio_resnet18.contrastive_resnet18``."""
    name, _, tag = image_model.partition(".")
    if name not in IMAGE_MODELS:
        raise InputError(f"{name!r} is not a SoundingEarth image tower; choose one of {sorted(IMAGE_MODELS)}")
    tag = tag or OBJECTIVES[0]
    if tag not in OBJECTIVES:
        raise InputError(f"unknown tag {tag!r} for {name}; choose one of {list(OBJECTIVES)}")
    return f"{AUDIO_MODEL}.{tag}_{IMAGE_MODELS[name]}"


def _cfg(model_name: str, tag: str, description: str, **kwargs: Any) -> dict[str, Any]:
    image = model_name != AUDIO_MODEL
    return {
        "hf_hub_id": hub_id(model_name, tag),
        "num_classes": EMBED_DIM,
        "input_size": IMAGE_INPUT_SIZE if image else AUDIO_INPUT_SIZE,
        "pool_size": (6, 6) if image else (4, 4),
        # The paper's evaluation crop: the centre 384 px of a 512 px tile, resized to 192 px.
        "crop_pct": 0.75 if image else 1.0,
        "interpolation": "bilinear",
        # Audio inputs are log-mel windows normalised by the front end (saved with the weight), so identity here.
        "mean": (0.485, 0.456, 0.406) if image else (0.0,),
        "std": (0.229, 0.224, 0.225) if image else (1.0,),
        "first_conv": "conv1",
        "classifier": "fc",
        "license": WEIGHTS_LICENSE,
        "description": description,
        "origin_url": ORIGIN_URL,
        "paper_ids": PAPER_ID,
        "paper_name": PAPER_NAME,
        **kwargs,
    }


def _image_cfgs() -> dict[str, dict[str, Any]]:
    cfgs = {}
    for name, backbone in IMAGE_MODELS.items():
        for objective in OBJECTIVES:
            cfgs[f"{name}.{objective}"] = _cfg(
                name,
                objective,
                f"Image tower ({backbone}) of the SoundingEarth run trained with {_OBJECTIVE_TEXT[objective]}; "
                f"audio partner {audio_partner(f'{name}.{objective}')}.",
            )
    return cfgs


def _audio_cfgs() -> dict[str, dict[str, Any]]:
    cfgs = {}
    for backbone in IMAGE_MODELS.values():
        for objective in OBJECTIVES:
            tag = f"{objective}_{backbone}"
            cfgs[f"{AUDIO_MODEL}.{tag}"] = _cfg(
                AUDIO_MODEL,
                tag,
                f"Audio tower (resnet18, 1x128x128 log-mel windows) trained jointly with "
                f"soundingearth_{backbone}.{objective} using {_OBJECTIVE_TEXT[objective]}.",
            )
    return cfgs  # the first tag is timm's default: batch_triplet with the ResNet-18 partner


default_cfgs = generate_default_cfgs({**_image_cfgs(), **_audio_cfgs()})


def _hub_id_tried(variant: str, kwargs: dict[str, Any]) -> str | None:
    """The Hub id a failed load tried, or None when the weights came from a file or state dict the user gave."""
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get("pretrained_cfg"), pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay")
    )
    if cfg.file or cfg.state_dict is not None:
        return None
    return cfg.hf_hub_id


def _create(variant: str, block: type, layers: tuple[int, ...], pretrained: bool, **kwargs: Any) -> ResNet:
    model_args = dict(block=block, layers=layers, num_classes=EMBED_DIM)
    if variant == AUDIO_MODEL:
        model_args["in_chans"] = AUDIO_INPUT_SIZE[0]
    model_args.update(kwargs)
    try:
        return build_model_with_cfg(ResNet, variant, pretrained, **model_args)
    except OSError as err:
        # An unpublished, unreachable or uncached Hub repo surfaces as an OSError subclass from huggingface_hub
        # (LocalEntryNotFoundError, RepositoryNotFoundError, ...): say which repo was tried and the ways out.
        tried = _hub_id_tried(variant, kwargs) if pretrained else None
        if tried is None:
            raise
        raise WeightsUnavailableError(
            f"could not load pretrained weights for {variant} from the Hugging Face Hub repo '{tried}' "
            f"({type(err).__name__}). Either load a local file with "
            f"pretrained_cfg_overlay=dict(file='path/to/model.safetensors'), or make the repo reachable: "
            f"set HF_ENDPOINT to a mirror, or fill the cache (HF_HOME) and set HF_HUB_OFFLINE=1."
        ) from err


@register_model
def soundingearth_resnet18(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 image tower: 3x192x192 RGB to a 128-d SoundingEarth embedding."""
    return _create("soundingearth_resnet18", BasicBlock, (2, 2, 2, 2), pretrained, **kwargs)


@register_model
def soundingearth_resnet50(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50 image tower: 3x192x192 RGB to a 128-d SoundingEarth embedding."""
    return _create("soundingearth_resnet50", Bottleneck, (3, 4, 6, 3), pretrained, **kwargs)


@register_model
def soundingearth_audio_resnet18(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 audio tower with a 1-channel stem: a 1x128x128 log-mel window to a 128-d embedding."""
    return _create(AUDIO_MODEL, BasicBlock, (2, 2, 2, 2), pretrained, **kwargs)


def pretrained_tags(model_name: str) -> list[str]:
    """Every ``name.tag`` registered for one model, timm's default first."""
    return list(get_arch_pretrained_cfgs(model_name))


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a registered SoundingEarth model (with or without tag), else raise InputError."""
    base, _, tag = name.partition(".")
    known = timm.list_models("soundingearth*")
    if base not in known:
        raise InputError(f"unknown model {name!r}; known SoundingEarth models: {', '.join(known)}")
    if tag and name not in pretrained_tags(base):
        raise InputError(f"unknown tag {tag!r} for {base}; known: {', '.join(pretrained_tags(base))}")
    return name


# --- The 32-wide stem of the authors' last code revision (for their converted weights) ---------------------------

#: ``backbone -> registered variant`` whose single 7x7 stem is 32 channels wide (timm's is always 64).
STEM32_MODELS = {"resnet18": "soundingearth_resnet18_stem32", "resnet50": "soundingearth_resnet50_stem32"}


class StemWidthResNet(ResNet):
    """A timm ``ResNet`` whose single 7x7 stem is ``stem_width`` channels wide.

    timm reads ``stem_width`` only for its deep stems and keeps the plain 7x7 stem at 64 channels; the last revision
    of the authors' code narrowed it to 32. After timm's construction the stem is rebuilt at that width, and so is the
    first residual block, whose input narrows (it gains the torchvision-style projection shortcut where input and
    output widths differ). Everything else is timm's ResNet, so ``stem_width`` round-trips through ``model_args``.
    """

    def __init__(self, block: type, layers: tuple[int, ...], stem_width: int = 32, **kwargs: Any) -> None:
        if kwargs.get("stem_type") or kwargs.get("avg_down"):
            raise ValueError("StemWidthResNet rebuilds the plain 7x7 stem; deep stems and avg_down are not supported")
        super().__init__(block, layers, **kwargs)
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        norm_layer = type(self.bn1)
        self.conv1 = nn.Conv2d(self.in_chans, stem_width, kernel_size=7, stride=2, padding=3, bias=False, **dd)
        self.bn1 = norm_layer(stem_width, **dd)
        self.feature_info[0]["num_chs"] = stem_width

        first = self.layer1[0]
        old = first.conv1
        first.conv1 = nn.Conv2d(
            stem_width, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation, old.groups,
            bias=old.bias is not None, **dd,
        )
        out_chs = (first.bn3 if hasattr(first, "bn3") else first.bn2).num_features
        first.downsample = (
            downsample_conv(stem_width, out_chs, kernel_size=1, norm_layer=norm_layer, **dd)
            if stem_width != out_chs
            else None
        )
        for conv in (self.conv1, first.conv1, *(first.downsample or ())[:1]):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as timm inits its convs


def _stem32_cfg(backbone: str) -> dict[str, Any]:
    cfg = _cfg(STEM32_MODELS[backbone], "", f"{backbone} with the 32-wide stem of the authors' last code revision.")
    del cfg["hf_hub_id"]  # an architecture for converted weights; nothing is published under this name
    return cfg


default_cfgs.update(generate_default_cfgs({name: _stem32_cfg(backbone) for backbone, name in STEM32_MODELS.items()}))


@register_model
def soundingearth_resnet18_stem32(pretrained: bool = False, **kwargs: Any) -> StemWidthResNet:
    """ResNet-18 tower with the authors' 32-wide 7x7 stem (``in_chans=1`` for the audio tower)."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2), num_classes=EMBED_DIM)
    return build_model_with_cfg(StemWidthResNet, STEM32_MODELS["resnet18"], pretrained, **dict(model_args, **kwargs))


@register_model
def soundingearth_resnet50_stem32(pretrained: bool = False, **kwargs: Any) -> StemWidthResNet:
    """ResNet-50 image tower with the authors' 32-wide 7x7 stem."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), num_classes=EMBED_DIM)
    return build_model_with_cfg(StemWidthResNet, STEM32_MODELS["resnet50"], pretrained, **dict(model_args, **kwargs))
