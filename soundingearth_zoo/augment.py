"""The paper's image augmentations, as torchvision transforms v2.

The reference pipeline (albumentations, in the authors' released code) on a 1024 px tile: centre crop 512 px,
``RandomResizedCrop`` to 192 px with scale 0.5-1.0, rotation up to 180 degrees with reflected borders, a 3 px blur,
grid distortion, hue/saturation/value shifts, ImageNet normalisation; evaluation takes the centre 384 px and
resizes it to 192. The paper's text has a square crop of 192 to 384 px sides instead of the random resized crop:
``mode="paper"``. Every size is a fraction of the input, so the 256 px tiles of the demo archive get the same
treatment as the real 1024 px ones.

The transforms take the central half of the tile, which is what ``prepare`` stores, or the whole tile with
``from_tile=True``. The blur is a 3 px Gaussian (the reference's is a 3 px box). Two transforms are written here,
as v2 transforms, because the stock ones alone cost more than a whole training sample may (200 samples/s per
core leave 5 ms):

- ``RandomRotateDistort``: albumentations' ``GridDistortion`` stretches each of a few grid cells per axis by a
  random factor, a smooth, separable warp. ``v2.ElasticTransform`` is torchvision's nearest transform, but its
  field is per-pixel noise smoothed by a Gaussian, so a field as smooth as five cells needs a blur kernel of
  about a third of the image, which its dense 2-D convolution makes 100+ ms at 192 px. Here the grid-distortion
  field is drawn directly and composed with the rotation into one sampling grid, applied in one ``grid_sample``
  with reflected borders (as the reference's rotation had).
- ``RandomHSV``: ``v2.ColorJitter``'s hue step converts to HSV and back (about 5 ms at 192 px); a hue rotation
  and a saturation scale about the grey axis of YIQ space, with a value scale, are one 3x3 colour matrix
  (the approach of NVIDIA DALI's ``hsv`` operator).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "EVAL_FRACTION",
    "IMAGE_SIZE",
    "TILE_FRACTION",
    "CentralCrop",
    "RandomHSV",
    "RandomRotateDistort",
    "eval_image_transform",
    "train_image_transform",
]

#: Side of the image tower's input, px.
IMAGE_SIZE = 192
#: Training sees the central half of a tile (512 of 1024 px), so augmented scenes stay near the recording.
TILE_FRACTION = 0.5
#: Evaluation sees the centre 384 px of that 512 px crop.
EVAL_FRACTION = 0.75
#: Square crop sides of the paper's text, as fractions of the 512 px crop: 192 to 384 px.
PAPER_CROP_FRACTIONS = (192 / 512, 384 / 512)


class CentralCrop(v2.Transform):
    """Centre crop to ``fraction`` of the input's height and width (``v2.CenterCrop`` takes pixels)."""

    def __init__(self, fraction: float):
        super().__init__()
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {"output_size": [max(round(height * self.fraction), 1), max(round(width * self.fraction), 1)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.center_crop(inpt, params["output_size"])


@functools.lru_cache(maxsize=8)
def _pixel_centres(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y of the pixel centres in ``grid_sample``'s normalised coordinates. Cached: never modify them."""
    xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width)
    return xs, torch.linspace(-1 + 1 / height, 1 - 1 / height, height)


def _float_image(inpt: Any, name: str) -> torch.Tensor:
    if not (isinstance(inpt, torch.Tensor) and inpt.is_floating_point()):
        raise TypeError(f"{name} takes float image tensors; put v2.ToDtype(torch.float32, scale=True) before it")
    return inpt.as_subclass(torch.Tensor)


def _like(out: torch.Tensor, inpt: Any) -> Any:
    return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class RandomRotateDistort(v2.Transform):
    """Rotation by a uniform angle in ``[-degrees, degrees]``, then (with probability ``distort_p``) grid
    distortion with ``num_steps`` cells per axis, each stretched by a factor in ``1 +- distort_limit``
    (albumentations' ``GridDistortion`` defaults), in one ``grid_sample`` with reflected borders."""

    def __init__(
        self,
        degrees: float = 180.0,
        distort_limit: float = 0.3,
        num_steps: int = 5,
        distort_p: float = 0.5,
        mode: str = "bilinear",
    ):
        super().__init__()
        self.degrees = degrees
        self.distort_limit = distort_limit
        self.num_steps = num_steps
        self.distort_p = distort_p
        self.mode = mode

    def _distorted_axis(self, n: int) -> torch.Tensor:
        """Where the ``n`` pixel centres of one axis sample from: a monotone piecewise-linear stretch."""
        stretch = 1 + torch.empty(self.num_steps).uniform_(-self.distort_limit, self.distort_limit)
        knots = torch.cat([torch.zeros(1), stretch.cumsum(0)])
        knots = 2 * knots / knots[-1] - 1
        axis = torch.nn.functional.interpolate(knots.view(1, 1, -1), size=n, mode="linear", align_corners=True)
        return axis.view(-1) * (1 - 1 / n)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        xs, ys = _pixel_centres(height, width)
        if float(torch.rand(())) < self.distort_p:
            xs, ys = self._distorted_axis(width), self._distorted_axis(height)
        angle = math.radians(float(torch.empty(()).uniform_(-self.degrees, self.degrees)))
        cos, sin = math.cos(angle), math.sin(angle)
        # Rotate in half-pixel units, so that the aspect is kept: grid[i, j] = x_j * rx + y_i * ry.
        rx = torch.tensor([cos, sin * width / height])
        ry = torch.tensor([-sin * height / width, cos])
        grid = xs.view(1, -1, 1) * rx + ys.view(-1, 1, 1) * ry
        return {"grid": grid.unsqueeze(0)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        image = _float_image(inpt, type(self).__name__)
        batch = image.reshape(-1, *image.shape[-3:])
        grid = params["grid"].expand(batch.shape[0], -1, -1, -1)
        out = torch.nn.functional.grid_sample(batch, grid, self.mode, padding_mode="reflection", align_corners=False)
        return _like(out.reshape(image.shape), inpt)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


class RandomHSV(v2.Transform):
    """With probability ``p``: hue rotated by up to ``hue`` of a turn, saturation and value scaled by up to
    ``1 +- saturation`` and ``1 +- value``, as one colour matrix; float images in [0, 1], clamped after.

    The defaults approximate albumentations' ``HueSaturationValue`` of the reference (hue +-20 of 180, saturation
    +-30 and value +-20 of 255, p=0.5)."""

    def __init__(self, hue: float = 0.1, saturation: float = 0.3, value: float = 0.2, p: float = 0.5):
        super().__init__()
        self.hue, self.saturation, self.value, self.p = hue, saturation, value, p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if float(torch.rand(())) >= self.p:
            return {"matrix": None}
        turn, sat, val = (torch.empty(()).uniform_(-r, r).item() for r in (self.hue, self.saturation, self.value))
        cos, sin = math.cos(2 * math.pi * turn), math.sin(2 * math.pi * turn)
        chroma = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
        chroma[1:, 1:] *= 1 + sat
        return {"matrix": (1 + val) * _YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        matrix = params["matrix"]
        if matrix is None:
            return inpt
        image = _float_image(inpt, type(self).__name__)
        return _like(torch.einsum("ij,...jhw->...ihw", matrix.to(image), image).clamp_(0, 1), inpt)


def train_image_transform(mode: str = "code", size: int = IMAGE_SIZE, from_tile: bool = False) -> v2.Compose:
    """Training augmentation of a PIL image or uint8 tensor to a normalised float ``[3, size, size]``.

    ``mode="code"``: the released code's ``RandomResizedCrop`` (area 0.5 to 1.0 of the input, aspect 3/4 to 4/3);
    ``mode="paper"``: a square of 192/512 to 384/512 of the input's side (its area drawn uniformly, as
    ``RandomResizedCrop`` does). The input is the central half of a tile, or the whole tile with ``from_tile=True``.
    """
    if mode == "code":
        crop = v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True)
    elif mode == "paper":
        low, high = PAPER_CROP_FRACTIONS
        crop = v2.RandomResizedCrop(size, scale=(low**2, high**2), ratio=(1.0, 1.0), antialias=True)
    else:
        raise ValueError(f"augmentation mode must be 'code' or 'paper', got {mode!r}")
    return v2.Compose([
        v2.ToImage(),
        *([CentralCrop(TILE_FRACTION)] if from_tile else []),
        crop,  # on uint8, the fast path, before anything else touches the full-size image
        v2.ToDtype(torch.float32, scale=True),
        RandomRotateDistort(),
        v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.5),
        RandomHSV(),
        v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        v2.ToPureTensor(),
    ])


def eval_image_transform(size: int = IMAGE_SIZE, from_tile: bool = False) -> v2.Compose:
    """Evaluation: the centre ``EVAL_FRACTION`` (384 of 512 px) resized to ``size``, normalised."""
    fraction = EVAL_FRACTION * (TILE_FRACTION if from_tile else 1.0)
    return v2.Compose([
        v2.ToImage(),
        CentralCrop(fraction),
        v2.Resize([size, size], antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        v2.ToPureTensor(),
    ])
