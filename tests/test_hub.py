"""Pretrained loading: local files, a Hugging Face cache written by the test (offline), errors, torch.hub."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models import save_for_hf

import soundingearth_zoo
from soundingearth_zoo.models import WeightsUnavailableError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _write_weights(name: str, path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tower with random (but not default-initialised) weights, saved as safetensors."""
    torch.manual_seed(seed)
    model = timm.create_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state_dict, path)
    return state_dict


def _write_hf_cache(cache: Path, repo_id: str, folder: Path, revision: str = "main") -> str:
    """Lay out ``folder``'s files as huggingface_hub's cache holds a downloaded snapshot of ``repo_id``."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    return commit


def _assert_state_equal(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", ["soundingearth_resnet18", "soundingearth_audio_resnet18"])
def test_load_local_file(tmp_path, name):
    path = tmp_path / "model.safetensors"
    written = _write_weights(name, path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    _assert_state_equal(model, written)


def test_local_file_fine_tune_and_features(tmp_path):
    """What users do next: a fresh classifier or a feature pyramid on top of the pretrained trunk."""
    path = tmp_path / "model.safetensors"
    written = _write_weights("soundingearth_resnet18", path)
    overlay = dict(file=str(path))
    clf = timm.create_model("soundingearth_resnet18", pretrained=True, pretrained_cfg_overlay=overlay, num_classes=21)
    assert clf.fc.out_features == 21
    torch.testing.assert_close(clf.layer4[1].conv2.weight, written["layer4.1.conv2.weight"], rtol=0, atol=0)
    assert not torch.equal(clf.fc.weight[:1], written["fc.weight"][:1, : clf.fc.weight.shape[1]])
    feats = timm.create_model("soundingearth_resnet18", pretrained=True, pretrained_cfg_overlay=overlay,
                              features_only=True)
    torch.testing.assert_close(feats.layer1[0].conv1.weight, written["layer1.0.conv1.weight"], rtol=0, atol=0)
    # timm's own contract: pretrained weights adapt to another number of input channels
    one_channel = timm.create_model("soundingearth_resnet18", pretrained=True, pretrained_cfg_overlay=overlay,
                                    in_chans=1, num_classes=5)
    assert one_channel.conv1.weight.shape[1] == 1


def test_load_from_offline_hf_cache(tmp_path, _isolated_hf_home):
    name = "soundingearth_resnet50.contrastive"
    repo_id = soundingearth_zoo.hub_id("soundingearth_resnet50", "contrastive")
    folder = tmp_path / "export"
    source = timm.create_model(name)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0, 0.02)
    save_for_hf(source, folder, safe_serialization=True)
    written = load_file(folder / "model.safetensors")
    _write_hf_cache(_isolated_hf_home / "hub", repo_id, folder)

    model = timm.create_model(name, pretrained=True)  # through timm -> huggingface_hub, HF_HUB_OFFLINE=1
    _assert_state_equal(model, written)
    # plain timm by Hub id reads config.json from the same cache: the path users without this package take
    plain = timm.create_model(f"hf-hub:{repo_id}", pretrained=True)
    _assert_state_equal(plain, written)
    assert plain.pretrained_cfg["hf_hub_id"] == repo_id


def test_missing_weight_error_names_hub_id_and_ways_out():
    with pytest.raises(WeightsUnavailableError) as info:
        timm.create_model("soundingearth_resnet18.naive_triplet", pretrained=True)
    message = str(info.value)
    assert "soundingearth-zoo/soundingearth_resnet18.naive_triplet" in message
    assert "pretrained_cfg_overlay=dict(file=" in message and "HF_ENDPOINT" in message
    assert "\n" not in message


def test_missing_local_file_is_not_blamed_on_the_hub(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises((FileNotFoundError, RuntimeError)) as info:
        timm.create_model("soundingearth_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))
    assert not isinstance(info.value, WeightsUnavailableError)


def test_hubconf_entrypoints():
    """What torch.hub.list / torch.hub.help report (this torch offers them for GitHub repos only, not local dirs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", REPO_ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entrypoints = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    assert entrypoints == {"soundingearth_resnet18", "soundingearth_resnet50", "soundingearth_audio_resnet18"}
    assert set(hubconf.dependencies) <= {"torch", "timm", "huggingface_hub", "safetensors"}
    for name in entrypoints:
        assert "128-d" in getattr(hubconf, name).__doc__


def test_torch_hub_local(tmp_path):
    model = torch.hub.load(str(REPO_ROOT), "soundingearth_resnet18", source="local", num_classes=10)
    assert model.fc.out_features == 10
    path = tmp_path / "audio.safetensors"
    written = _write_weights("soundingearth_audio_resnet18", path, seed=3)
    audio = torch.hub.load(str(REPO_ROOT), "soundingearth_audio_resnet18", source="local", pretrained=True,
                           tag="contrastive_resnet18", pretrained_cfg_overlay=dict(file=str(path)))
    _assert_state_equal(audio, written)
    assert audio.pretrained_cfg["tag"] == "contrastive_resnet18"
