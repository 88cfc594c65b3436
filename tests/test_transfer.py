"""Transfer protocol on a tiny generated ImageFolder: runs, is deterministic, loads weights, fails cleanly."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from soundingearth_zoo import transfer
from soundingearth_zoo.cards import cards_dir
from soundingearth_zoo.cli import build_parser, main
from soundingearth_zoo.errors import InputError

CLASSES = ("field", "forest", "water")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 classes x 8 images of 64 px (JPEG and PNG), each class its own colour under noise."""
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    colours = {"field": (180, 160, 60), "forest": (40, 90, 40), "water": (30, 60, 140)}
    for name in CLASSES:
        (root / name).mkdir()
        for i in range(8):
            pixels = np.clip(np.array(colours[name]) + rng.normal(0, 30, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.{'jpg' if i % 2 else 'png'}")
    return root


def _run(image_folder, out, *extra):
    # 32 px inputs and 2 epochs keep three runs of a ResNet-18 within a few seconds.
    return main(["evaluate", "transfer", "--model", "soundingearth_resnet18", "--no-pretrained", "--data",
                 str(image_folder), "--out", str(out), "--image-size", "32", "--epochs", "2", "--knn-k", "5",
                 *extra])


def test_protocol_runs_and_is_deterministic(image_folder, tmp_path):
    parser_defaults = build_parser().parse_args(["evaluate", "transfer", "--model", "m", "--data", "d", "--out", "o"])
    assert (parser_defaults.epochs, parser_defaults.batch_size, parser_defaults.lr) == (5, 48, 1e-3)  # the paper's
    assert _run(image_folder, tmp_path / "a") == 0
    assert _run(image_folder, tmp_path / "b") == 0
    first = (tmp_path / "a" / "transfer.json").read_text()
    assert first == (tmp_path / "b" / "transfer.json").read_text()
    results = json.loads(first)
    assert results["classes"] == list(CLASSES)
    assert (results["num_train"], results["num_test"]) == (12, 12)
    accuracies = results["finetune"]["accuracy_after_epoch"]
    assert list(accuracies) == ["1", "2"]
    for acc in [*accuracies.values(), results["linear_probe"]["accuracy"], results["knn"]["accuracy"]]:
        assert 0.0 <= acc <= 1.0 and (acc * 12) == pytest.approx(round(acc * 12))
    # Plain colours: even random features separate them.
    assert results["knn"]["accuracy"] > 0.5
    markdown = (tmp_path / "a" / "transfer.md").read_text()
    assert "fine-tuned, after epoch 2" in markdown and "linear probe" in markdown

    # The weight card takes these numbers from the JSON.
    card = shutil.copy(cards_dir() / "soundingearth_resnet18.batch_triplet.md", tmp_path / "card.md")
    assert main(["card-metrics", str(card), str(tmp_path / "a" / "transfer.json"), "--command", "cmd"]) == 0
    text = open(card, encoding="utf-8").read()
    assert "### Transfer to scene classification" in text
    assert f"| linear probe, frozen backbone | {100 * results['linear_probe']['accuracy']:.2f} % |" in text

    # Any timm model is a baseline through the same code.
    assert main(["evaluate", "transfer", "--model", "resnet10t", "--no-pretrained", "--data", str(image_folder),
                 "--out", str(tmp_path / "c"), "--image-size", "32", "--epochs", "1", "--seed", "1"]) == 0
    baseline = json.loads((tmp_path / "c" / "transfer.json").read_text())
    assert (baseline["model"], baseline["seed"], baseline["pretrained"]) == ("resnet10t", 1, False)
    assert list(baseline["finetune"]["accuracy_after_epoch"]) == ["1"]


def test_alternate_split_even_train_odd_test():
    train, test = transfer.alternate_split(list(range(7)))
    assert list(train.indices) == [0, 2, 4, 6]
    assert list(test.indices) == [1, 3, 5]


def test_build_model_loads_a_weights_file(tmp_path):
    source = timm.create_model("soundingearth_resnet18")
    path = tmp_path / "tower.safetensors"
    save_file(source.state_dict(), path)
    model = transfer.build_model("soundingearth_resnet18", num_classes=3, weights=path)
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert model.fc.out_features == 3
    with pytest.raises(InputError, match="does not fit"):
        transfer.build_model("resnet50", num_classes=3, weights=path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="not a readable weights file"):
        transfer.build_model("resnet18", num_classes=3, weights=junk)
    with pytest.raises(InputError, match="not found"):
        transfer.build_model("resnet18", num_classes=3, weights=tmp_path / "missing.safetensors")


def test_unavailable_model_or_data_is_one_line_error(image_folder, tmp_path, capsys):
    argvs = [
        # Offline and not cached: the weight cannot be had.
        ["--model", "soundingearth_resnet18.batch_triplet", "--data", str(image_folder)],
        ["--model", "no_such_model", "--no-pretrained", "--data", str(image_folder)],
        ["--model", "resnet18", "--no-pretrained", "--data", str(tmp_path / "missing")],
        ["--model", "resnet18", "--no-pretrained", "--data", str(tmp_path)],  # no class folders
    ]
    for argv in argvs:
        assert main(["evaluate", "transfer", *argv, "--out", str(tmp_path / "out")]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_probes_classify_separable_features():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen) * 5
    labels = torch.arange(4).repeat_interleave(10)
    feats = centres[labels] + torch.randn(40, 16, generator=gen)
    train, test = slice(0, 40, 2), slice(1, 40, 2)
    args = (feats[train], labels[train], feats[test], labels[test], 4)
    assert transfer.linear_probe_accuracy(*args) == 1.0
    assert transfer.knn_accuracy(*args, k=3) == 1.0
    # Labels unrelated to the features: near chance, not perfect.
    shuffled = labels[torch.randperm(40, generator=gen)]
    assert transfer.knn_accuracy(feats[train], shuffled[train], feats[test], shuffled[test], 4, k=3) < 0.75
