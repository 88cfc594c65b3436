"""Image augmentations: shapes and dtypes, relative sizes, and the hand-made transforms against exact cases."""
from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms.v2 import functional as F

from soundingearth_zoo.augment import (
    CentralCrop,
    TrainAugment,
    eval_image_transform,
    train_image_transform,
)

MEAN, STD = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


def _params(augment: TrainAugment, image: torch.Tensor, *, box=None, degrees=0.0, blur_sigma=None,
            colour=None, stretch=None) -> torch.Tensor:
    """Parameters with chosen values: ``box`` (top, left, height, width; default the whole image), a rotation,
    a blur, a colour matrix, distortion stretches (default none)."""
    params = augment.draw(image)
    params[0:4] = torch.tensor(box or (0, 0, *image.shape[-2:]), dtype=torch.float32)
    params[4:6] = torch.tensor([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])
    side = math.exp(-0.5 / blur_sigma**2) if blur_sigma else 0.0
    params[6] = side / (1 + 2 * side)
    params[7:16] = (torch.eye(3) if colour is None else colour).flatten()
    params[16:] = 1.0 if stretch is None else stretch
    return params


def _apply(augment: TrainAugment, image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The augmented image in [0, 1] (normalisation undone)."""
    return _unnormalise(augment.apply(image[None], params[None])[0])


@pytest.mark.parametrize("mode", ["code", "paper"])
@pytest.mark.parametrize("from_tile,side", [(False, 96), (True, 256)])
def test_train_transform_output(mode, from_tile, side):
    tile = torch.randint(0, 256, (3, side, side), dtype=torch.uint8)
    out = train_image_transform(mode, size=64, from_tile=from_tile)(tile)
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 64, 64)
    assert torch.isfinite(out).all()
    pil = train_image_transform(mode, size=64, from_tile=from_tile)(Image.new("RGB", (side, side), "white"))
    assert pil.shape == (3, 64, 64)


def test_augment_takes_pil_images():
    image = Image.new("RGB", (40, 30), "white")
    assert TrainAugment(16)(image).shape == (3, 16, 16)


def test_train_transform_is_random_and_seedable():
    tile = torch.randint(0, 256, (3, 80, 80), dtype=torch.uint8)
    transform = train_image_transform(size=32)
    torch.manual_seed(0)
    a, b = transform(tile), transform(tile)
    torch.manual_seed(0)
    assert not torch.equal(a, b) and torch.equal(transform(tile), a)
    with pytest.raises(ValueError, match="code.*paper"):
        train_image_transform("albumentations")


def test_eval_transform_takes_the_centre_384_of_512():
    """On a 512 px crop whose centre 384 px are white and the rest black, evaluation sees only white."""
    crop = torch.zeros(3, 512, 512, dtype=torch.uint8)
    crop[:, 64:448, 64:448] = 255
    out = eval_image_transform(size=48)(crop)
    white = (1 - torch.tensor(IMAGENET_DEFAULT_MEAN)) / torch.tensor(IMAGENET_DEFAULT_STD)
    torch.testing.assert_close(out, white.view(3, 1, 1).expand(3, 48, 48))
    # the whole tile: the same view, a quarter of the tile further in
    tile = torch.zeros(3, 1024, 1024, dtype=torch.uint8)
    tile[:, 256:768, 256:768] = crop
    torch.testing.assert_close(eval_image_transform(size=48, from_tile=True)(tile), out)


def test_central_crop_is_relative():
    assert CentralCrop(0.5)(torch.zeros(3, 100, 60)).shape == (3, 50, 30)
    with pytest.raises(ValueError):
        CentralCrop(1.5)


def test_identity_and_exact_rotations():
    image = torch.rand(3, 32, 32)
    augment = TrainAugment(32)
    torch.testing.assert_close(_apply(augment, image, _params(augment, image)), image, atol=1e-5, rtol=0)
    half_turn = _apply(augment, image, _params(augment, image, degrees=180))
    torch.testing.assert_close(half_turn, image.flip(-1, -2), atol=1e-5, rtol=0)
    quarter = _apply(augment, image, _params(augment, image, degrees=90))
    assert min((quarter - torch.rot90(image, k, (1, 2))).abs().max() for k in (1, 3)) < 1e-5


def test_crop_is_one_bilinear_resampling_of_the_crop():
    """uint8 in; the crop's own pixels resampled (bilinear, as v2.functional.resized_crop without antialiasing
    does), then turned, in one pass."""
    image = torch.randint(0, 256, (3, 100, 120), dtype=torch.uint8)
    augment = TrainAugment(48)
    box = (13, 21, 57, 70)
    expected = F.resized_crop(image.float() / 255, *box, [48, 48], antialias=False)
    torch.testing.assert_close(_apply(augment, image, _params(augment, image, box=box)), expected, atol=1e-5, rtol=0)
    turned = _apply(augment, image, _params(augment, image, box=box, degrees=180))
    torch.testing.assert_close(turned, expected.flip(-1, -2), atol=1e-5, rtol=0)


def test_rotation_reflects_at_the_crop_border():
    """A 45 degree turn of a constant crop stays constant: the corners are mirrored crop, not fill, and nothing
    outside the crop (here of another value) is sampled."""
    image = torch.zeros(3, 64, 64)
    image[:, 16:48, 16:48] = 0.7
    augment = TrainAugment(32)
    out = _apply(augment, image, _params(augment, image, box=(16, 16, 32, 32), degrees=45))
    torch.testing.assert_close(out, torch.full((3, 32, 32), 0.7), atol=1e-5, rtol=0)


def test_grid_distortion_is_a_monotone_stretch_within_the_crop():
    augment = TrainAugment(50, distort_limit=0.3, num_steps=5)
    image = torch.zeros(3, 50, 50)
    torch.manual_seed(0)
    stretch = torch.empty(10).uniform_(0.7, 1.3)
    grid = augment.grid(_params(augment, image, stretch=stretch)[None], 50, 50)[0]
    xs = grid[0, :, 0]
    assert (xs.diff() > 0).all() and xs.abs().max() < 1
    steps = xs.diff() * 50 / 2  # source pixels per output pixel
    assert steps.min() >= 0.7 - 0.05 and steps.max() <= 1.3 + 0.05 and steps.std() > 0.01
    assert torch.allclose(grid[:, 0, 1], grid[:, -1, 1])  # separable: y does not depend on x
    identity = augment.grid(_params(augment, image)[None], 50, 50)[0]
    torch.testing.assert_close(identity[0, :, 0], torch.linspace(-1 + 1 / 50, 1 - 1 / 50, 50))


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0])
def test_blur_is_torchvisions_gaussian_kernel(sigma):
    image = torch.rand(3, 20, 20)
    augment = TrainAugment(20)
    blurred = _apply(augment, image, _params(augment, image, blur_sigma=sigma))
    torch.testing.assert_close(blurred, F.gaussian_blur(image, [3, 3], [sigma, sigma]), atol=1e-5, rtol=0)


def _drawn_colour(augment: TrainAugment, image: torch.Tensor, draw: str) -> torch.Tensor:
    """The colour matrix drawn with every uniform draw at the bottom or top of its range."""
    end = {"low": lambda self, low, high: self.fill_(low), "high": lambda self, low, high: self.fill_(high)}[draw]
    with mock.patch.object(torch.Tensor, "uniform_", end), mock.patch("torch.rand", lambda *a: torch.zeros(())):
        return augment.draw(image)[7:16].view(3, 3)


def test_hsv_colour_matrix():
    grey = torch.full((3, 8, 8), 0.4)
    hue = TrainAugment(8, hsv=(0.5, 0.0, 0.0), hsv_p=1.0)
    for _ in range(3):  # a hue rotation leaves grey alone
        torch.testing.assert_close(_apply(hue, grey, _params(hue, grey, colour=hue.draw(grey)[7:16].view(3, 3))),
                                   grey, atol=1e-5, rtol=0)
    colour = torch.tensor([0.8, 0.3, 0.1]).view(3, 1, 1).expand(3, 8, 8).clone()
    desaturate = TrainAugment(8, hsv=(0.0, 1.0, 0.0), hsv_p=1.0)
    matrix = _drawn_colour(desaturate, colour, "low")  # saturation factor 0
    luma = 0.299 * 0.8 + 0.587 * 0.3 + 0.114 * 0.1
    flat = _apply(desaturate, colour, _params(desaturate, colour, colour=matrix))
    torch.testing.assert_close(flat, torch.full_like(colour, luma), atol=1e-3, rtol=0)
    full_turn = TrainAugment(8, hsv=(1.0, 0.0, 0.0), hsv_p=1.0)  # a whole turn of hue is the identity
    torch.testing.assert_close(_drawn_colour(full_turn, colour, "high"), torch.eye(3), atol=1e-5, rtol=0)
    assert torch.equal(TrainAugment(8, hsv_p=0.0).draw(colour)[7:16], torch.eye(3).flatten())


def test_a_batch_on_the_device_is_each_image_alone():
    """apply() on a batch (different crops, turns, blurs, colours, distortions) gives each image what one call of
    the v2 transform with the same random state gives it."""
    augment = TrainAugment(24)
    images = torch.randint(0, 256, (4, 3, 64, 80), dtype=torch.uint8)
    torch.manual_seed(3)
    params = torch.stack([augment.draw(image) for image in images])
    batch = augment.apply(images, params)
    torch.manual_seed(3)
    alone = torch.stack([augment(image) for image in images])
    assert batch.shape == (4, 3, 24, 24) and not torch.equal(batch[0], batch[1])
    torch.testing.assert_close(batch, alone, atol=1e-4, rtol=0)  # float rounding of the coordinates


def test_paper_crop_sides():
    """mode="paper" crops squares of 192/512 to 384/512 of the side."""
    transform = train_image_transform("paper")
    augment = next(t for t in transform.transforms if isinstance(t, TrainAugment))
    torch.manual_seed(0)
    image = torch.zeros(3, 512, 512, dtype=torch.uint8)
    sides = []
    for _ in range(200):
        height, width = augment.draw(image)[2:4].tolist()
        assert height == width
        sides.append(height)
    assert 192 <= min(sides) and max(sides) <= 384 and max(sides) - min(sides) > 100


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the trainer's device)")
def test_apply_on_the_gpu_equals_the_cpu():
    augment = TrainAugment(48)
    images = torch.randint(0, 256, (8, 3, 128, 128), dtype=torch.uint8)
    torch.manual_seed(0)
    params = torch.stack([augment.draw(image) for image in images])
    on_gpu = augment.apply(images.cuda(), params)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), augment.apply(images, params), atol=1e-4, rtol=0)
