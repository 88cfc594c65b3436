"""The image-audio pair: same embeddings as its towers, loading by name (local files, Hub cache, checkpoint)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from _audio_helpers import make_signal, write_audio
from PIL import Image
from safetensors.torch import save_file

import soundingearth_zoo
from soundingearth_zoo.audio import (
    FRONTEND_METADATA_KEY,
    FrontendConfig,
    LogMel,
    frame_windows,
    load_audio,
    read_windows,
)
from soundingearth_zoo.checkpoint import CHECKPOINT_FORMAT, save_atomic
from soundingearth_zoo.errors import InputError
from soundingearth_zoo.images import eval_transform, load_image
from soundingearth_zoo.pair import AudioVisualPair

IMAGE = "soundingearth_resnet18"
AUDIO = soundingearth_zoo.AUDIO_MODEL
# Not the default, so loading must carry it; small windows (the tower pools globally) keep the tests fast.
FRONTEND = FrontendConfig(n_mels=64, window_frames=40, mean=-5.0, std=3.0, max_windows=3)


def random_tower(name: str, seed: int, **kwargs) -> torch.nn.Module:
    """A tower whose every weight and BatchNorm statistic is random, so any mix-up changes the output."""
    model = timm.create_model(name, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def pair() -> AudioVisualPair:
    image = random_tower(IMAGE, 0, pretrained_cfg_overlay={"input_size": (3, 64, 64)})  # 64 px inputs
    return AudioVisualPair(image, random_tower(AUDIO, 1), FRONTEND).eval()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("media")
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    images = [root / "rgb.jpg", root / "grey.png", root / "rgba.png"]
    for path, mode in zip(images, ["RGB", "L", "RGBA"]):
        Image.fromarray(pixels).convert(mode).save(path)
    sounds = [
        write_audio(root / "long.mp3", make_signal(6.0, 44100, 2), 44100),  # 6 windows, capped to 3
        write_audio(root / "short.flac", make_signal(0.5, 16000), 16000),
        write_audio(root / "mid.wav", make_signal(3.5, 22050, seed=1), 22050),
    ]
    return {"images": images, "audio": sounds}


def test_pair_embeddings_equal_the_towers_own(pair, media):
    with torch.no_grad():
        tensors = torch.stack([eval_transform(pair.image)(load_image(p)) for p in media["images"]])
        expected = pair.image(tensors)
        torch.testing.assert_close(pair.encode_image(media["images"]), expected)
        torch.testing.assert_close(pair.encode_image(tensors), expected)
        torch.testing.assert_close(pair.encode_image(Image.open(media["images"][1])), expected[1:2])

        expected = torch.stack([pair.audio(read_windows(p, FRONTEND)).mean(0) for p in media["audio"]])
        assert read_windows(media["audio"][0], FRONTEND).shape[0] == FRONTEND.max_windows
        torch.testing.assert_close(pair.encode_audio(media["audio"]), expected)
        torch.testing.assert_close(pair.encode_audio(media["audio"][2]), expected[2:])
        # a waveform at the front end's rate is the same clip as the file it came from
        waveform = load_audio(media["audio"][2], FRONTEND.sample_rate)
        torch.testing.assert_close(pair.encode_audio(waveform), expected[2:], atol=1e-5, rtol=1e-4)
        windows = frame_windows(LogMel(FRONTEND)(waveform), FRONTEND)
        torch.testing.assert_close(pair.encode_audio(windows), pair.audio(windows))
        assert pair.encode_audio(waveform, max_windows=1).shape == (1, soundingearth_zoo.EMBED_DIM)


def test_similarity_is_negative_euclidean_distance(pair):
    a, b = torch.randn(4, 128), torch.randn(6, 128)
    expected = -((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).sqrt()
    torch.testing.assert_close(pair.similarity(a, b), expected, atol=1e-4, rtol=1e-4)


def _save_tower(model: torch.nn.Module, path: Path, frontend: FrontendConfig | None = None) -> Path:
    metadata = {"format": "pt"} | ({FRONTEND_METADATA_KEY: frontend.to_json()} if frontend else {})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata=metadata)
    return path


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=key)


def test_from_pretrained_local_files_carry_the_frontend(pair, tmp_path):
    image_file = _save_tower(pair.image, tmp_path / "image.safetensors")
    audio_file = _save_tower(pair.audio, tmp_path / "audio" / "model.safetensors", FRONTEND) if (
        (tmp_path / "audio").mkdir() is None) else None
    loaded = AudioVisualPair.from_pretrained(f"{IMAGE}.contrastive", image_weights=image_file, audio_weights=audio_file)
    assert not loaded.training and loaded.frontend_config == FRONTEND
    _assert_same_weights(loaded.image, pair.image)
    _assert_same_weights(loaded.audio, pair.audio)

    # no metadata: the Hub folder's config.json beside the file, else the default front end
    _save_tower(pair.audio, audio_file)
    other = dataclasses.replace(FRONTEND, n_mels=64)
    (audio_file.parent / "config.json").write_text(json.dumps({"architecture": "resnet18",
                                                                "audio_frontend": other.to_dict()}))
    assert AudioVisualPair.from_pretrained(IMAGE, audio_weights=audio_file, image_weights=image_file
                                           ).frontend_config == other
    (audio_file.parent / "config.json").unlink()
    assert AudioVisualPair.from_pretrained(IMAGE, False, audio_weights=audio_file).frontend_config == FrontendConfig()


def test_from_pretrained_rejects_bad_names_and_files(pair, tmp_path):
    image_file = _save_tower(pair.image, tmp_path / "image.safetensors")
    for kwargs, message in [
        ({"name": AUDIO}, "not a SoundingEarth image tower"),
        ({"name": f"{IMAGE}.nonsense"}, "unknown tag"),
        ({"name": IMAGE, "pretrained": False, "audio_weights": image_file}, "does not hold weights"),
        ({"name": IMAGE, "pretrained": False, "image_weights": tmp_path / "missing.safetensors"}, "not found"),
    ]:
        with pytest.raises(InputError, match=message) as err:
            AudioVisualPair.from_pretrained(**kwargs)
        assert "\n" not in str(err.value)


def _write_hf_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay out ``folder`` as huggingface_hub caches a downloaded snapshot of ``repo_id``."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


def test_checkpoint_export_and_hub_load_give_the_same_pair(pair, media, tmp_path, _isolated_hf_home):
    """A training checkpoint, loaded directly and through export + the (offline) Hub cache, by its name."""
    from soundingearth_zoo.export import export_checkpoint

    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "config": {"image_model": IMAGE, "audio_model": AUDIO, "objective": "naive_triplet"},
        "frontend": FRONTEND.to_dict(),
        "image_state_dict": pair.image.state_dict(),
        "audio_state_dict": pair.audio.state_dict(),
        "step": 1,
        "epoch": 1,
    }
    path = save_atomic(ckpt, tmp_path / "last.pt")
    from_ckpt = AudioVisualPair.from_checkpoint(path)
    assert from_ckpt.frontend_config == FRONTEND

    folders = export_checkpoint(path, tmp_path / "export")
    name = f"{IMAGE}.naive_triplet"
    for role, tower in [("image", name), ("audio", soundingearth_zoo.audio_partner(name))]:
        _write_hf_cache(_isolated_hf_home / "hub", soundingearth_zoo.hub_id(*tower.split(".")), folders[role])
    from_hub = AudioVisualPair.from_pretrained(name)
    assert from_hub.frontend_config == FRONTEND

    with torch.no_grad():
        expected_audio = pair.encode_audio(media["audio"][0])
        # the loaded image towers take the registry's input size (192 px), not the fixture's 64 px
        image = eval_transform(from_hub.image)(load_image(media["images"][0]))
        assert image.shape == (3, 192, 192)
        expected_image = pair.image(image[None])
        for loaded in (from_ckpt, from_hub):
            torch.testing.assert_close(loaded.encode_audio(media["audio"][0]), expected_audio)
            torch.testing.assert_close(loaded.encode_image(media["images"][0]), expected_image)
