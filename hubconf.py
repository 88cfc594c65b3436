"""torch.hub entry points for the SoundingEarth towers.

    model = torch.hub.load("<owner>/soundingearth-zoo", "soundingearth_resnet50", pretrained=True)
    model = torch.hub.load("<owner>/soundingearth-zoo", "soundingearth_resnet18", tag="contrastive", num_classes=21)

Every entry point builds the timm model of the same name; keyword arguments go straight to
``timm.create_model`` (``num_classes``, ``features_only``, ``pretrained_cfg_overlay``, ...).
"""
from __future__ import annotations

dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]

import timm  # noqa: E402

import soundingearth_zoo  # noqa: E402,F401  (registers the towers with timm)


def _create(model_name: str, pretrained: bool, tag: str | None, **kwargs):
    name = f"{model_name}.{tag}" if tag else model_name
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def soundingearth_resnet18(pretrained: bool = False, tag: str | None = None, **kwargs):
    """ResNet-18 image tower: 3x192x192 RGB aerial image to a 128-d SoundingEarth embedding.

    tag: batch_triplet (default), contrastive or naive_triplet, the paper's pre-training objectives.
    Use num_classes=N for a fresh classifier, features_only=True for a feature pyramid.
    """
    return _create("soundingearth_resnet18", pretrained, tag, **kwargs)


def soundingearth_resnet50(pretrained: bool = False, tag: str | None = None, **kwargs):
    """ResNet-50 image tower: 3x192x192 RGB aerial image to a 128-d SoundingEarth embedding.

    tag: batch_triplet (default), contrastive or naive_triplet, the paper's pre-training objectives.
    Use num_classes=N for a fresh classifier, features_only=True for a feature pyramid.
    """
    return _create("soundingearth_resnet50", pretrained, tag, **kwargs)


def soundingearth_audio_resnet18(pretrained: bool = False, tag: str | None = None, **kwargs):
    """ResNet-18 audio tower: 1x128x128 log-mel window to a 128-d SoundingEarth embedding.

    tag: <objective>_<image backbone>, e.g. batch_triplet_resnet18 (default) or contrastive_resnet50: the run whose
    image tower it was trained with. soundingearth_zoo.pair.AudioVisualPair turns audio files into its input.
    """
    return _create("soundingearth_audio_resnet18", pretrained, tag, **kwargs)
