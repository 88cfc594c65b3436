"""Conversion of the authors' checkpoints, checked against a reference implementation of their layout."""
from __future__ import annotations

import json
import os

import pytest
import torch
from _export_helpers import load_in_fresh_interpreter, randomize_, save_io
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from soundingearth_zoo.cli import main
from soundingearth_zoo.convert import load_original, original_towers
from soundingearth_zoo.errors import InputError


class AuthorsResNet(nn.Module):
    """The authors' encoder layout, written from the issue's description: a torchvision ResNet body with a given stem
    width and stage widths, then a 1x1 conv to the embedding, applied to the feature map and averaged (image) or
    applied to the averaged features (audio)."""

    def __init__(self, block, layers, in_chans, stem_width, widths, pool_first, embed_dim=128):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = stem_width
        for i, (planes, num_blocks) in enumerate(zip(widths, layers)):
            stride, out = (1 if i == 0 else 2), planes * block.expansion
            downsample = None
            if stride != 1 or inplanes != out:
                downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            blocks = [block(inplanes, planes, stride, downsample)] + [block(out, planes) for _ in range(num_blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = out
        self.fc = nn.Conv2d(inplanes, embed_dim, 1)
        self.pool_first = pool_first

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.pool_first:
            return self.fc(x.mean((2, 3), keepdim=True)).flatten(1)
        return self.fc(x).mean((2, 3))


class Encoder(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.module_list = nn.ModuleList([net])


class Wrapper(nn.Module):
    """The released training code's model: both encoders and a loss with a parameter."""

    def __init__(self, image, audio):
        super().__init__()
        self.img_encoder, self.snd_encoder = Encoder(image), Encoder(audio)
        self.loss_function = nn.Module()
        self.loss_function.log_temperature = nn.Parameter(torch.zeros(()))


RESNET18, RESNET50 = (BasicBlock, (2, 2, 2, 2)), (Bottleneck, (3, 4, 6, 3))
VARIANTS = {
    # name: stem width, stage widths, objective, expected image / audio folder and architecture
    "torchvision": (64, (64, 128, 256, 512), "batch_triplet",
                    ("soundingearth_resnet18.batch_triplet", "resnet18"),
                    ("soundingearth_audio_resnet18.batch_triplet_resnet18", "resnet18")),
    "stem32": (32, (64, 182, 256, 512), "contrastive",
               ("soundingearth_resnet18.contrastive", "soundingearth_resnet18_stem32"),
               ("soundingearth_audio_resnet18.contrastive_resnet18", "soundingearth_resnet18_stem32")),
}


def _authors_model(image_depth, stem_width, widths, seed=0):
    image = AuthorsResNet(*image_depth, in_chans=3, stem_width=stem_width, widths=widths, pool_first=False)
    audio = AuthorsResNet(*RESNET18, in_chans=1, stem_width=stem_width, widths=widths, pool_first=True)
    return Wrapper(randomize_(image, seed), randomize_(audio, seed + 1))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each variant: the authors' model with random weights, saved as their code does, converted by the CLI."""
    out = {}
    for variant, (stem, widths, objective, *expected) in VARIANTS.items():
        tmp = tmp_path_factory.mktemp(variant)
        model = _authors_model(RESNET18, stem, widths)
        torch.save(model.state_dict(), tmp / "latest.pt")
        assert main(["convert-original", str(tmp / "latest.pt"), str(tmp / "out"), "--objective", objective]) == 0
        towers = {}
        for (role, encoder, shape), (folder, architecture) in zip(
            (("image", model.img_encoder, (2, 3, 64, 64)), ("audio", model.snd_encoder, (2, 1, 128, 128))), expected
        ):
            io = save_io(encoder.module_list[0], tmp / f"{role}-io.pt", shape)
            towers[role] = {"folder": tmp / "out" / folder, "architecture": architecture, "io": io}
        out[variant] = {"towers": towers, "stem": stem, "widths": widths}
    return out


def test_converted_configs_describe_the_authors_layout(converted):
    for variant in converted.values():
        for role, tower in variant["towers"].items():
            config = json.loads((tower["folder"] / "config.json").read_text())
            assert config["architecture"] == tower["architecture"]
            assert config["model_args"]["channels"] == list(variant["widths"])
            assert config["model_args"]["in_chans"] == {"image": 3, "audio": 1}[role]
            assert config["model_args"].get("stem_width", 64) == variant["stem"]
            assert config["pretrained_cfg"]["hf_hub_id"] == f"soundingearth-zoo/{tower['folder'].name}"
            assert ("audio_frontend" in config) == (role == "audio")
            assert "convert-original" in (tower["folder"] / "README.md").read_text()


def test_converted_towers_match_the_reference_in_a_fresh_interpreter(converted):
    plain, stem32 = converted["torchvision"]["towers"], converted["stem32"]["towers"]
    jobs = [
        # plain timm, soundingearth_zoo never imported: torchvision widths load, the 32-wide stem does not
        *({"folder": str(t["folder"]), "io": str(t["io"]), "import_package": False} for t in plain.values()),
        {"folder": str(stem32["image"]["folder"]), "io": str(stem32["image"]["io"]), "import_package": False},
        # after `import soundingearth_zoo` the registered stem variant loads too
        *({"folder": str(t["folder"]), "io": str(t["io"]), "import_package": True} for t in stem32.values()),
    ]
    results = load_in_fresh_interpreter(jobs)
    for result in results[:2]:
        assert result["max_abs_diff"] < 1e-4 and result["class"] == "ResNet" and not result["package_imported"]
    assert "Unknown model (soundingearth_resnet18_stem32)" in results[2]["error"]
    for result in results[3:]:
        assert result["max_abs_diff"] < 1e-4 and result["class"] == "StemWidthResNet" and result["package_imported"]


class _RunsCode:
    """Unpickling this calls ``os.mkdir(path)``: a stand-in for a checkpoint that executes code when loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_pickle_that_is_not_a_plain_state_dict_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    torch.save({"img_encoder.module_list.0.conv1.weight": torch.ones(1), "x": _RunsCode(str(marker))},
               tmp_path / "evil.pt")
    assert main(["convert-original", str(tmp_path / "evil.pt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights_only=True" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the payload is live: an unsafe load would have run it
    assert marker.exists()


def _small_state(tmp_path, edit, image_depth=RESNET18):
    """A small model in the authors' layout (32-wide stem, narrow stages), edited, saved, split by
    ``load_original``."""
    model = _authors_model(image_depth, 32, (8, 16, 16, 16))
    state = model.state_dict()
    edit(state)
    torch.save(state, tmp_path / "ckpt.pt")
    return model, load_original(tmp_path / "ckpt.pt")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.update({"img_encoder.module_list.1.weight": torch.ones(2)}), "img_encoder.module_list.1.weight"),
        (lambda s: s.update({"snd_encoder.module_list.0.layer1.0.extra": torch.ones(2)}),
         "snd_encoder.module_list.0.layer1.0.extra"),
        (lambda s: s.update({"snd_encoder.module_list.0.layer2.1.conv2.weight": torch.ones(16, 16, 1, 1)}),
         "snd_encoder.module_list.0.layer2.1.conv2.weight"),
        (lambda s: s.pop("img_encoder.module_list.0.layer3.0.bn2.running_var"),
         "img_encoder.module_list.0.layer3.0.bn2.running_var"),
        (lambda s: s.update({"img_encoder.module_list.0.fc.weight": torch.ones(64, 16, 1, 1)}),
         "img_encoder.module_list.0.fc.weight"),
        (lambda s: s.update({"snd_encoder.module_list.0.conv1.weight": torch.ones(32, 3, 7, 7)}),
         "snd_encoder.module_list.0.conv1.weight"),
    ],
    ids=["other-module", "unknown-key", "shape", "missing", "embedding-dim", "audio-channels"],
)
def test_a_key_that_does_not_fit_is_named(tmp_path, edit, named):
    with pytest.raises(InputError, match=named.replace(".", r"\.")):
        original_towers(_small_state(tmp_path, edit)[1])


def test_bottleneck_towers_match_the_reference(tmp_path):
    """ResNet-50 depth (Bottleneck blocks, whose first block gains a wider shortcut) at narrow widths, 32-wide stem;
    the loss parameter is left out."""
    model, states = _small_state(tmp_path, lambda s: None, image_depth=RESNET50)
    towers = original_towers(states, objective="naive_triplet")
    assert towers["image"].name == "soundingearth_resnet50.naive_triplet"
    assert towers["audio"].name == "soundingearth_audio_resnet18.naive_triplet_resnet50"
    assert towers["image"].architecture == "soundingearth_resnet50_stem32"
    assert [f["num_chs"] for f in towers["image"].model.feature_info] == [32, 32, 64, 64, 64]
    for role, encoder, x in (("image", model.img_encoder, torch.randn(2, 3, 32, 32)),
                             ("audio", model.snd_encoder, torch.randn(2, 1, 32, 32))):
        with torch.no_grad():
            torch.testing.assert_close(towers[role].model(x), encoder.module_list[0](x))


def test_an_unknown_objective_is_refused(tmp_path):
    with pytest.raises(InputError, match="unknown tag"):
        original_towers(_small_state(tmp_path, lambda s: None)[1], objective="triplet")
