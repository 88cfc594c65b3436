"""SoundingEarth model zoo: audiovisual self-supervised ResNets for remote sensing, as timm models.

Importing the package registers ``soundingearth_resnet18``, ``soundingearth_resnet50`` and
``soundingearth_audio_resnet18`` with timm. It stays light: audio decoding, training and evaluation live in
modules that are imported only when used (and need the ``audio``/``train`` extras).
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .models import (
    AUDIO_MODEL,
    EMBED_DIM,
    HF_HUB_NAMESPACE,
    IMAGE_MODELS,
    OBJECTIVES,
    WeightsUnavailableError,
    audio_partner,
    hub_id,
    pretrained_tags,
)

try:
    __version__ = version("soundingearth-zoo")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "AUDIO_MODEL",
    "EMBED_DIM",
    "HF_HUB_NAMESPACE",
    "IMAGE_MODELS",
    "OBJECTIVES",
    "WeightsUnavailableError",
    "__version__",
    "audio_partner",
    "hub_id",
    "pretrained_tags",
]
