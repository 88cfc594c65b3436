"""Image decoding to RGB and the towers' evaluation transform from timm's data config."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import soundingearth_zoo  # noqa: F401  (registers the towers)
from soundingearth_zoo.errors import InputError
from soundingearth_zoo.images import ImageDecodeError, eval_transform, load_image


def _pixels(size: int = 48, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size + 8, channels), dtype=np.uint8)


@pytest.mark.parametrize("mode, suffix", [("RGB", ".jpg"), ("RGB", ".png"), ("L", ".jpg"), ("L", ".png"),
                                          ("RGBA", ".png"), ("P", ".png")])
def test_load_image_gives_rgb(tmp_path, mode, suffix):
    source = Image.fromarray(_pixels()).convert(mode)
    path = tmp_path / f"image{suffix}"
    source.save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == source.size
    pixels = np.asarray(image).astype(int)
    if mode == "L":
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    if suffix == ".png":  # lossless: the colours themselves survive
        np.testing.assert_array_equal(pixels, np.asarray(source.convert("RGB")))


def test_unreadable_images_raise_one_line_input_errors(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(_pixels(128)).save(good, quality=90)
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name, reason in [("truncated.jpg", "truncated"), ("empty.png", "empty.png"), ("text.jpg", "text.jpg"),
                         ("missing.png", "no such file")]:
        with pytest.raises(ImageDecodeError, match=reason) as err:
            load_image(tmp_path / name)
        assert isinstance(err.value, InputError) and "\n" not in str(err.value)


def test_eval_transform_follows_pretrained_cfg():
    model = timm.create_model("soundingearth_resnet18")
    cfg = model.pretrained_cfg
    colour = (200, 100, 30)
    x = eval_transform(model)(Image.new("RGB", (512, 512), colour))
    assert x.shape == cfg["input_size"]
    expected = (torch.tensor(colour) / 255 - torch.tensor(cfg["mean"])) / torch.tensor(cfg["std"])
    torch.testing.assert_close(x[:, 100, 100], expected.float(), atol=1e-3, rtol=0)

    # the crop is the centre crop_pct of the image: a border outside it never shows
    framed = Image.new("RGB", (512, 512), (255, 0, 0))
    framed.paste((0, 0, 255), (60, 60, 452, 452))
    x = eval_transform(model)(framed)
    assert (x[2] > 1.0).all() and (x[0] < 0).all()

    small = timm.create_model("soundingearth_resnet18", pretrained_cfg_overlay={"input_size": (3, 64, 64)})
    assert eval_transform(small)(framed).shape == (3, 64, 64)
