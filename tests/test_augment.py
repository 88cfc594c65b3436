"""Image augmentations: shapes and dtypes, relative sizes, and the two hand-made transforms against exact cases."""
from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from soundingearth_zoo.augment import (
    CentralCrop,
    RandomHSV,
    RandomRotateDistort,
    eval_image_transform,
    train_image_transform,
)


def _at_limit(transform, flat_inputs):
    """make_params with every uniform draw at the top of its range (the largest angle, stretch, ...)."""
    with mock.patch.object(torch.Tensor, "uniform_", lambda self, low, high: self.fill_(high)):
        return transform.make_params(flat_inputs)


@pytest.mark.parametrize("mode", ["code", "paper"])
@pytest.mark.parametrize("from_tile,side", [(False, 96), (True, 256)])
def test_train_transform_output(mode, from_tile, side):
    tile = torch.randint(0, 256, (3, side, side), dtype=torch.uint8)
    out = train_image_transform(mode, size=64, from_tile=from_tile)(tile)
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 64, 64)
    assert torch.isfinite(out).all()
    pil = train_image_transform(mode, size=64, from_tile=from_tile)(Image.new("RGB", (side, side), "white"))
    assert pil.shape == (3, 64, 64)


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


def test_rotate_distort_identity_and_exact_rotations():
    image = torch.rand(3, 40, 60)
    identity = RandomRotateDistort(degrees=0, distort_p=0)
    torch.testing.assert_close(identity(image), image, atol=1e-5, rtol=0)
    half_turn = RandomRotateDistort(degrees=180, distort_p=0)  # non-square: the aspect must be kept
    grid = _at_limit(half_turn, [image])
    torch.testing.assert_close(half_turn.transform(image, grid), image.flip(-1, -2), atol=1e-5, rtol=0)
    square = torch.rand(3, 32, 32)
    quarter = RandomRotateDistort(degrees=90, distort_p=0)
    out = quarter.transform(square, _at_limit(quarter, [square]))
    assert min((out - torch.rot90(square, k, (1, 2))).abs().max() for k in (1, 3)) < 1e-5


def test_rotation_reflects_at_the_border():
    """A 45 degree turn of a constant image stays constant: the corners are mirrored content, not fill."""
    image = torch.full((3, 32, 32), 0.7)
    turn = RandomRotateDistort(degrees=45, distort_p=0)
    torch.testing.assert_close(turn.transform(image, _at_limit(turn, [image])), image)


def test_grid_distortion_is_a_monotone_stretch_within_the_image():
    distort = RandomRotateDistort(degrees=0, distort_p=1.0, distort_limit=0.3, num_steps=5)
    torch.manual_seed(0)
    grid = distort.make_params([torch.zeros(3, 50, 50)])["grid"][0]
    xs = grid[0, :, 0]
    assert (xs.diff() > 0).all() and xs.abs().max() < 1
    steps = xs.diff() * 50 / 2  # source pixels per output pixel
    assert steps.min() >= 0.7 - 0.05 and steps.max() <= 1.3 + 0.05 and steps.std() > 0.01
    assert torch.allclose(grid[:, 0, 1], grid[:, -1, 1])  # separable: y does not depend on x


def test_hsv_matrix():
    grey = torch.full((3, 8, 8), 0.4)
    hsv = RandomHSV(hue=0.5, saturation=0.0, value=0.0, p=1.0)
    for _ in range(3):  # a hue rotation leaves grey alone
        torch.testing.assert_close(hsv(grey), grey)
    colour = torch.tensor([0.8, 0.3, 0.1]).view(3, 1, 1).expand(3, 4, 4).clone()
    desaturate = RandomHSV(hue=0.0, saturation=1.0, value=0.0, p=1.0)
    with mock.patch.object(torch.Tensor, "uniform_", lambda self, low, high: self.fill_(low)):
        flat = desaturate.transform(colour, desaturate.make_params([colour]))  # saturation factor 0
    luma = 0.299 * 0.8 + 0.587 * 0.3 + 0.114 * 0.1
    torch.testing.assert_close(flat, torch.full_like(colour, luma), atol=1e-3, rtol=0)
    full_turn = RandomHSV(hue=1.0, saturation=0.0, value=0.0, p=1.0)
    params = _at_limit(full_turn, [colour])  # a whole turn of hue is the identity
    torch.testing.assert_close(full_turn.transform(colour, params), colour, atol=1e-5, rtol=0)
    assert RandomHSV(p=0.0)(colour) is colour
    with pytest.raises(TypeError, match="float"):
        RandomHSV(p=1.0)(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_paper_crop_sides():
    """mode="paper" crops squares of 192/512 to 384/512 of the side."""
    transform = train_image_transform("paper")
    crop = next(t for t in transform.transforms if type(t).__name__ == "RandomResizedCrop")
    torch.manual_seed(0)
    image = torch.zeros(3, 512, 512, dtype=torch.uint8)
    sides = []
    for _ in range(200):
        params = crop.make_params([image])
        assert params["height"] == params["width"]
        sides.append(params["height"])
    assert 192 <= min(sides) and max(sides) <= 384 and max(sides) - min(sides) > 100
    assert math.isclose(crop.ratio[0], 1.0) and math.isclose(crop.ratio[1], 1.0)
