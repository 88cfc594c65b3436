"""The towers as timm models: the contract timm's own test suite checks for every registered model."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.models import create_feature_extractor, get_graph_node_names

import soundingearth_zoo
from soundingearth_zoo.models import AUDIO_MODEL, EMBED_DIM, IMAGE_MODELS, OBJECTIVES, audio_partner

MODELS = ["soundingearth_resnet18", "soundingearth_resnet50", "soundingearth_audio_resnet18"]
# timm's contract holds for every registered model, the conversion variants included
ALL_MODELS = timm.list_models("soundingearth*")
FEATURE_CHANNELS = {
    "soundingearth_resnet18": [64, 64, 128, 256, 512],
    "soundingearth_resnet50": [64, 256, 512, 1024, 2048],
    "soundingearth_audio_resnet18": [64, 64, 128, 256, 512],
}


def _input(model: torch.nn.Module, batch_size: int = 1, size: int | None = None) -> torch.Tensor:
    chans, height, width = model.pretrained_cfg["input_size"]
    return torch.randn(batch_size, chans, size or height, size or width)


def test_registered_with_timm():
    assert set(MODELS) <= set(ALL_MODELS)
    expected = {f"{name}.{objective}" for name in IMAGE_MODELS for objective in OBJECTIVES}
    expected |= {audio_partner(f"{name}.{objective}") for name in IMAGE_MODELS for objective in OBJECTIVES}
    assert set(timm.list_pretrained("soundingearth*")) == expected
    # batch_triplet is the default tag; the audio default is the partner of the default ResNet-18 run
    assert timm.models.get_pretrained_cfg("soundingearth_resnet50").tag == "batch_triplet"
    assert timm.models.get_pretrained_cfg(AUDIO_MODEL).tag == "batch_triplet_resnet18"


@pytest.mark.parametrize("name", timm.list_pretrained("soundingearth*"))
def test_pretrained_cfg_complete(name):
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    base, tag = name.split(".")
    assert cfg["hf_hub_id"] == f"{soundingearth_zoo.HF_HUB_NAMESPACE}/{name}"
    assert cfg["architecture"] == base and cfg["tag"] == tag
    assert cfg["input_size"] == ((1, 128, 128) if base == AUDIO_MODEL else (3, 192, 192))
    for key in ("mean", "std", "interpolation", "crop_pct", "first_conv", "classifier", "license", "description"):
        assert cfg.get(key) not in (None, ""), key
    assert cfg["paper_ids"] == "arXiv:2108.00688"
    assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0]
    assert cfg["num_classes"] == EMBED_DIM


@pytest.mark.parametrize("name", MODELS)
def test_forward_embedding(name):
    model = timm.create_model(name).eval()
    x = _input(model, batch_size=2)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, EMBED_DIM)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_backward_fresh_classifier(name):
    model = timm.create_model(name, num_classes=21).train()
    assert model.fc.out_features == 21
    out = model(_input(model, batch_size=2, size=96))
    assert out.shape == (2, 21)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_default_cfg_contract(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    x = _input(model)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape[-2:] == cfg["pool_size"]
        model.reset_classifier(0)
        pooled = model(x)
        assert pooled.shape == (1, model.num_features)
        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.shape[-2:] == cfg["pool_size"]
    state_dict = timm.create_model(name).state_dict()
    assert cfg["classifier"] + ".weight" in state_dict
    assert cfg["first_conv"] + ".weight" in state_dict


@pytest.mark.parametrize("name", ALL_MODELS)
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    channels = model.feature_info.channels()
    if name in FEATURE_CHANNELS:  # the documented pyramids
        assert channels == FEATURE_CHANNELS[name]
    x = torch.randn(1, 1 if name == AUDIO_MODEL else 3, 96, 96)
    with torch.no_grad():
        outs = model(x)
    assert [o.shape[1] for o in outs] == channels
    assert [o.shape[-1] for o in outs] == [48, 24, 12, 6, 3]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_torchscript(name):
    with timm.layers.set_layer_config(scriptable=True):
        model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    x = _input(model, size=64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_fx_feature_extraction(name):
    model = timm.create_model(name).eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert "fc" in eval_nodes and "layer4" in " ".join(eval_nodes)
    extractor = create_feature_extractor(model, return_nodes={"layer4": "layer4", "fc": "embedding"})
    x = _input(model, size=64)
    with torch.no_grad():
        out = extractor(x)
        torch.testing.assert_close(out["embedding"], model(x))
    assert out["layer4"].shape[1] == model.num_features


def test_unknown_model_name_is_clear():
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("soundingearth_resnet34")
    with pytest.raises(RuntimeError, match="Invalid pretrained tag"):
        timm.create_model("soundingearth_resnet18.simclr")


def test_audio_partner():
    assert audio_partner("soundingearth_resnet18") == "soundingearth_audio_resnet18.batch_triplet_resnet18"
    assert audio_partner("soundingearth_resnet50.contrastive") == "soundingearth_audio_resnet18.contrastive_resnet50"
    with pytest.raises(ValueError, match="not a SoundingEarth image tower"):
        audio_partner("resnet50")


def test_import_stays_light():
    """`import soundingearth_zoo` must not pull in training or audio dependencies."""
    import subprocess
    import sys

    code = (
        "import sys, soundingearth_zoo; heavy = [m for m in ('torchaudio', 'soundfile', 'matplotlib', 'tensorboard',"
        " 'librosa', 'pandas') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
