"""The paper's image augmentations, as torchvision transforms v2.

The reference pipeline (albumentations, in the authors' released code) on a 1024 px tile: centre crop 512 px,
``RandomResizedCrop`` to 192 px with scale 0.5-1.0, rotation up to 180 degrees with reflected borders, a 3 px blur,
grid distortion, hue/saturation/value shifts, ImageNet normalisation; evaluation takes the centre 384 px and
resizes it to 192. The paper's text has a square crop of 192 to 384 px sides instead of the random resized crop:
``mode="paper"``. Every size is a fraction of the input, so the 256 px tiles of the demo archive get the same
treatment as the real 1024 px ones.

The transforms take the central half of the tile, which is what ``prepare`` stores, or the whole tile with
``from_tile=True``. The blur is a 3 px Gaussian (the reference's is a 3 px box).

``TrainAugment`` is written here rather than composed of stock v2 transforms, because those cost more per sample
than a data loader core may spend (16 cores must feed one GPU) and run only on the CPU:

- albumentations' ``GridDistortion`` stretches each of a few grid cells per axis by a random factor, a smooth,
  separable warp. ``v2.ElasticTransform`` is torchvision's nearest transform, but its field is per-pixel noise
  smoothed by a Gaussian, so a field as smooth as five cells needs a blur kernel of about a third of the image,
  which its dense 2-D convolution makes 100+ ms at 192 px. Here the distortion is drawn directly and composed with
  the crop and the rotation into one sampling grid.
- ``v2.ColorJitter``'s hue step converts to HSV and back (about 5 ms at 192 px); here the shift is a 3x3 matrix.
- The parameters are drawn per sample in the data loader and applied to a whole batch, on the training GPU when
  there is one: the loader then only decodes and draws (``PreparedDataset(defer_augment=True)``, which the trainer
  uses).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "EVAL_FRACTION",
    "IMAGE_SIZE",
    "TILE_FRACTION",
    "CentralCrop",
    "TrainAugment",
    "eval_image_transform",
    "train_augment",
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


# One sample's augmentation, drawn in the data loader, as a float32 vector (so that a batch of them collates):
_BOX = slice(0, 4)  # the crop: top, left, height, width in input pixels
_TURN = slice(4, 6)  # cosine and sine of the rotation
_BLUR = 6  # weight of each side tap of the 3-tap Gaussian (0: no blur)
_COLOUR = slice(7, 16)  # 3x3 colour matrix of the hue/saturation/value shift, row-major (identity: none)
_STRETCH = 16  # then the grid distortion's stretch of each cell, along x then y (all 1: none)

_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _reflect(coords: torch.Tensor) -> torch.Tensor:
    """Normalised coordinates within [-3, 3] mirrored into [-1, 1] at the image's edges, in place (as
    ``grid_sample``'s reflection padding with ``align_corners=False``): ``2 clamp(x, -1, 1) - x``."""
    return torch.sub(coords.clamp(-1, 1).mul_(2), coords, out=coords)


class TrainAugment(v2.Transform):
    """The paper's training augmentation: ``RandomResizedCrop`` to ``size`` (``scale``, ``ratio``), a rotation by
    up to ``degrees`` with reflected borders, with probability ``distort_p`` a grid distortion of ``num_steps``
    cells per axis each stretched by ``1 +- distort_limit`` (albumentations' ``GridDistortion``), with
    probability ``blur_p`` a 3x3 Gaussian blur of ``sigma`` in ``blur_sigma`` (``v2.GaussianBlur``'s kernel),
    with probability ``hsv_p`` a hue/saturation/value shift of up to ``hsv`` (hue in turns), ImageNet
    normalisation. uint8 or float [0, 1] images in, normalised float ``[3, size, size]`` out.

    Two steps, so that the data loader only decodes: ``draw(image)`` takes one sample's parameters from torch's
    global RNG (a float vector that collates), ``apply(images, params)`` transforms a batch of equal-size images
    on any device, the training GPU included. Called as a v2 transform it does both on one image.

    The crop, the rotation and the distortion are one sampling grid, applied in one ``grid_sample``: one
    interpolation instead of two, the rotation's reflection at the crop's border as in the reference. Like the
    reference's OpenCV linear resize, it does not filter before it subsamples.
    """

    def __init__(
        self,
        size: int = IMAGE_SIZE,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        degrees: float = 180.0,
        distort_limit: float = 0.3,
        num_steps: int = 5,
        distort_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 1.0),
        blur_p: float = 0.5,
        hsv: tuple[float, float, float] = (0.1, 0.3, 0.2),
        hsv_p: float = 0.5,
    ):
        super().__init__()
        self.crop = v2.RandomResizedCrop(size, scale=scale, ratio=ratio)
        self.size = size
        self.degrees, self.distort_limit, self.num_steps, self.distort_p = degrees, distort_limit, num_steps, distort_p
        self.blur_sigma, self.blur_p = blur_sigma, blur_p
        self.hsv, self.hsv_p = hsv, hsv_p
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1), persistent=False)

    # -------------------------------------------------------------------------------- drawing (data loader)
    def draw(self, image: Any) -> torch.Tensor:
        """One sample's parameters for ``image`` (a tensor or PIL image; only its size is read)."""
        params = torch.empty(_STRETCH + 2 * self.num_steps)
        box = self.crop.make_params([image])
        params[_BOX] = torch.tensor([box["top"], box["left"], box["height"], box["width"]], dtype=torch.float32)
        angle = math.radians(float(torch.empty(()).uniform_(-self.degrees, self.degrees)))
        params[_TURN] = torch.tensor([math.cos(angle), math.sin(angle)])
        if float(torch.rand(())) < self.blur_p:
            side = math.exp(-0.5 / float(torch.empty(()).uniform_(*self.blur_sigma)) ** 2)
            params[_BLUR] = side / (1 + 2 * side)
        else:
            params[_BLUR] = 0.0
        params[_COLOUR] = self._colour_matrix().flatten()
        stretch = params[_STRETCH:]
        if float(torch.rand(())) < self.distort_p:
            stretch.uniform_(1 - self.distort_limit, 1 + self.distort_limit)
        else:
            stretch.fill_(1.0)
        return params

    def _colour_matrix(self) -> torch.Tensor:
        """A hue rotation and a saturation scale about the grey axis of YIQ space, with a value scale: one 3x3
        matrix (the approach of NVIDIA DALI's ``hsv`` operator; ``v2.ColorJitter`` converts to HSV and back)."""
        if float(torch.rand(())) >= self.hsv_p:
            return torch.eye(3)
        turn, sat, val = (float(torch.empty(()).uniform_(-r, r)) for r in self.hsv)
        cos, sin = math.cos(2 * math.pi * turn), math.sin(2 * math.pi * turn)
        chroma = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
        chroma[1:, 1:] *= 1 + sat
        return (1 + val) * _YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ

    # ------------------------------------------------------------------------------ applying (any device)
    def _axes(self, stretch: torch.Tensor) -> torch.Tensor:
        """``[B, size]`` source coordinates of the output's pixel centres along one axis, in the crop's
        normalised coordinates: a monotone piecewise-linear stretch of ``num_steps`` cells (none if all are 1)."""
        knots = torch.nn.functional.pad(stretch.cumsum(dim=1), (1, 0))
        knots = 2 * knots / knots[:, -1:] - 1
        axes = torch.nn.functional.interpolate(knots[:, None], size=self.size, mode="linear", align_corners=True)
        return axes[:, 0] * (1 - 1 / self.size)

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``[B, size, size, 2]`` sampling grid of the crop, rotation and distortion, in the normalised
        coordinates of the ``height`` x ``width`` input."""
        steps = self.num_steps
        xs = self._axes(params[:, _STRETCH:_STRETCH + steps])[:, None, :]  # [B, 1, size]
        ys = self._axes(params[:, _STRETCH + steps:])[:, :, None]  # [B, size, 1]
        cos, sin = (v.view(-1, 1, 1) for v in params[:, _TURN].unbind(1))
        top, left, crop_h, crop_w = (v.view(-1, 1, 1) for v in params[:, _BOX].unbind(1))
        grid = torch.empty(len(params), self.size, self.size, 2, device=params.device)
        # Rotated in the square output, mirrored at the crop's border (|coordinate| <= sqrt(2) here) and kept
        # within its outer pixel centres, so that no pixel outside the crop is read (as grid_sample's reflection
        # padding on the crop alone does), then mapped from the crop's normalised coordinates to the input's.
        for axis, coords, side, start, extent in (
            (0, xs * cos - ys * sin, width, left, crop_w),
            (1, xs * sin + ys * cos, height, top, crop_h),
        ):
            inner = 1 - 1 / extent
            coords = torch.clamp(_reflect(coords), -inner, inner)
            torch.addcmul((2 * start + extent) / side - 1, coords, extent / side, out=grid[..., axis])
        return grid

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Augment a batch ``[B, 3, H, W]`` (uint8, or float in [0, 1]) with its drawn ``params`` ``[B, P]``: the
        images on the device that should do the work, the parameters as the loader made them (on the CPU, so
        that reading the crops' extent does not wait for the device). Returns normalised float
        ``[B, 3, size, size]``."""
        params = params.float()
        # Only the region that holds every crop of the batch is converted and sampled (one crop for one image).
        first = params[:, _BOX][:, :2].amin(dim=0)
        last = (params[:, _BOX][:, :2] + params[:, _BOX][:, 2:]).amax(dim=0)
        (top, left), (bottom, right) = first.int().tolist(), last.int().tolist()
        region = images[..., top:bottom, left:right]
        params = params.clone()
        params[:, 0] -= top
        params[:, 1] -= left
        params = params.to(images.device)
        grid = self.grid(params, bottom - top, right - left)
        out = torch.nn.functional.grid_sample(region.float(), grid, "bilinear", "border", align_corners=False)
        if not images.is_floating_point():
            out = out.mul_(1 / torch.iinfo(images.dtype).max)
        if params.device.type != "cpu" or (params[:, _BLUR] > 0).any():
            side = params[:, _BLUR].view(-1, 1, 1, 1)
            padded = torch.nn.functional.pad(out, (1, 1, 1, 1), mode="reflect")  # the blur as two 3-tap passes
            rows = torch.addcmul(padded[..., 1:-1] * (1 - 2 * side), padded[..., :-2] + padded[..., 2:], side)
            out = torch.addcmul(rows[..., 1:-1, :] * (1 - 2 * side), rows[..., :-2, :] + rows[..., 2:, :], side)
        colour = params[:, _COLOUR].view(-1, 3, 3)
        out = torch.bmm(colour, out.flatten(2)).view_as(out).clamp_(0, 1)
        return out.sub_(self.mean.to(out.device)).div_(self.std.to(out.device))

    # ---------------------------------------------------------------------------- v2 transform: one image
    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"params": self.draw(flat_inputs[0])}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        image = F.to_image(inpt).as_subclass(torch.Tensor)  # a PIL image too
        batch = image.reshape(-1, *image.shape[-3:])
        out = self.apply(batch, params["params"].expand(len(batch), -1))
        return out.reshape(*image.shape[:-3], *out.shape[-3:])


def train_augment(mode: str = "code", size: int = IMAGE_SIZE) -> TrainAugment:
    """The training augmentation of the central half of a tile. ``mode="code"``: the released code's
    ``RandomResizedCrop`` (area 0.5 to 1.0 of the input, aspect 3/4 to 4/3); ``mode="paper"``: a square of
    192/512 to 384/512 of the input's side (its area drawn uniformly, as ``RandomResizedCrop`` does)."""
    if mode == "code":
        return TrainAugment(size)
    if mode == "paper":
        low, high = PAPER_CROP_FRACTIONS
        return TrainAugment(size, scale=(low**2, high**2), ratio=(1.0, 1.0))
    raise ValueError(f"augmentation mode must be 'code' or 'paper', got {mode!r}")


def train_image_transform(mode: str = "code", size: int = IMAGE_SIZE, from_tile: bool = False) -> v2.Compose:
    """``train_augment(mode, size)`` of a PIL image or uint8 tensor, as one transform; the input is the central
    half of a tile, or the whole tile with ``from_tile=True``."""
    return v2.Compose([
        v2.ToImage(),
        *([CentralCrop(TILE_FRACTION)] if from_tile else []),
        train_augment(mode, size),
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
