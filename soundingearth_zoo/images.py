"""Image files to image-tower inputs: decoding to RGB, and the tower's own evaluation transform from timm."""
from __future__ import annotations

import os
from collections.abc import Callable

import timm.data
import torch
from PIL import Image
from torch import nn

from .errors import InputError

__all__ = ["ImageDecodeError", "eval_transform", "load_image"]


class ImageDecodeError(InputError):
    """An image file that cannot be read: missing, empty, truncated, corrupt or of an unknown format."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image fully (so truncation shows here, not later in a transform) and convert it to RGB: grey
    is replicated, palettes expanded, an alpha channel dropped."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise ImageDecodeError(f"cannot read image {path}: no such file") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # PIL's ways of saying "corrupt"
        reason = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
        raise ImageDecodeError(f"cannot read image {path}: {reason}") from err


def eval_transform(model: nn.Module) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation transform of a tower, from its ``pretrained_cfg`` (input size, crop, interpolation,
    mean/std) through ``timm.data``, as for any timm model."""
    return timm.data.create_transform(**timm.data.resolve_data_config(model=model), is_training=False)
