"""Transfer to scene classification: the paper's fine-tuning protocol, plus a frozen-backbone linear probe and k-NN.

The protocol follows the authors' evaluation code: an ImageFolder split 50/50 by alternate indices (even indices
train, odd test), the backbone with a new linear classifier, all weights trained with Adam (learning rate 1e-3, the
code's ``torch.optim.Adam`` default), batch 48, cross-entropy, no augmentation, test accuracy after every epoch (the
paper reports epochs 1, 2 and 5). The frozen-backbone probes are cheaper and far less noisy: pooled features are
computed once, then a multinomial logistic regression (L-BFGS) and a cosine k-NN classify them.

Any timm model name works, so baselines (``resnet18`` at random init, with ImageNet weights where the user has them
cached) run through the same code as ``soundingearth_resnet18.batch_triplet``. The same seed gives the same result
(data order, initialisation and training are seeded; on GPUs, nondeterministic cuDNN kernels may still differ).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .errors import InputError

__all__ = ["PROTOCOL", "alternate_split", "build_model", "cli_transfer", "evaluate_transfer", "knn_accuracy",
           "linear_probe_accuracy"]

PROTOCOL = ("The paper's protocol: split 50/50 by alternate indices (even train, odd test), new linear classifier, "
            "whole network trained with Adam and cross-entropy, no augmentation.")


def build_model(
    name: str, num_classes: int, pretrained: bool = True, weights: str | os.PathLike | None = None
) -> nn.Module:
    """A timm model with a fresh ``num_classes`` classifier (0: the pooled features), its backbone from the
    registered weight, from a local ``weights`` file (safetensors or a plain state dict), or random."""
    try:
        model = timm.create_model(name, pretrained=pretrained and weights is None, num_classes=num_classes)
    except InputError:  # a SoundingEarth weight that is not reachable: its message says what to do
        raise
    except (RuntimeError, OSError) as err:  # timm: unknown name, no weights; huggingface_hub: not reachable
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot create {name!r} (pretrained={pretrained}): {reason}; pass --weights FILE or "
                         f"--no-pretrained") from None
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise InputError(f"weights file not found: {path}")
        try:
            state = timm.models.load_state_dict(os.fspath(path))
        except Exception as err:  # corrupt, not a state dict, or a pickle that needs code: refuse in one line
            raise InputError(f"{path} is not a readable weights file ({type(err).__name__})") from None
        classifier = model.pretrained_cfg.get("classifier", "fc")
        state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shapes that do not fit; the first mismatch is on the message's second line
            lines = str(err).strip().splitlines()
            raise InputError(f"{path} does not fit {name}: {lines[min(1, len(lines) - 1)].strip()}") from None
        missing = [k for k in missing if not k.startswith(f"{classifier}.")]
        if missing or unexpected:
            raise InputError(f"{path} does not fit {name}: {len(missing)} missing and {len(unexpected)} unexpected "
                             f"weights (e.g. {(missing + unexpected)[0]})")
    return model


def alternate_split(dataset: Dataset) -> tuple[Subset, Subset]:
    """The protocol's 50/50 split: even indices train, odd indices test (ImageFolder sorts by class, then file)."""
    return Subset(dataset, range(0, len(dataset), 2)), Subset(dataset, range(1, len(dataset), 2))


def _image_folder(root: str | os.PathLike, image_size: int, model: nn.Module):
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from .images import load_image

    cfg = timm.data.resolve_data_config(model=model)
    transform = v2.Compose([
        v2.ToImage(),
        v2.Resize((image_size, image_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=cfg["mean"], std=cfg["std"]),
    ])
    if not Path(root).is_dir():
        raise InputError(f"image folder not found: {root}")
    try:
        return ImageFolder(os.fspath(root), transform=transform, loader=load_image)
    except FileNotFoundError as err:  # no class folders, or no images in them
        raise InputError(f"{root} is not an ImageFolder ({err})") from None


def _loader(data: Dataset, batch_size: int, workers: int, seed: int, shuffle: bool = False) -> DataLoader:
    """A loader whose order and worker seeds come from its own generator, not from the global RNG."""
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += (model(images.to(device)).argmax(dim=1).cpu() == labels).sum().item()
        total += len(labels)
    return correct / total


@torch.no_grad()
def _features(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    feats, labels = zip(*((model(images.to(device)).float().cpu(), y) for images, y in loader))
    return torch.cat(feats), torch.cat(labels)


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                          num_classes: int, weight_decay: float = 1e-4, max_iter: int = 200) -> float:
    """Multinomial logistic regression on standardised features, fitted full-batch with L-BFGS (deterministic)."""
    mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classifier = nn.Linear(train_x.shape[1], num_classes)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.LBFGS(classifier.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(classifier(train_x), train_y) + weight_decay * classifier.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (classifier(test_x).argmax(dim=1) == test_y).float().mean().item()


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, k: int = 20) -> float:
    """Cosine k-NN: each test image takes the class with the largest summed similarity among its k nearest."""
    sim = F.normalize(test_x, dim=1) @ F.normalize(train_x, dim=1).T
    top_sim, top_idx = sim.topk(min(k, len(train_x)), dim=1)
    votes = torch.zeros(len(test_x), num_classes).scatter_add_(1, train_y[top_idx], top_sim)
    return (votes.argmax(dim=1) == test_y).float().mean().item()


def evaluate_transfer(
    model: str,
    data: str | os.PathLike,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    epochs: int = 5,
    batch_size: int = 48,
    lr: float = 1e-3,
    image_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    workers: int = 0,
    knn_k: int = 20,
) -> dict[str, Any]:
    """Run the protocol on one ImageFolder; returns the settings and the test accuracies (fractions)."""
    if epochs < 1 or batch_size < 1 or image_size < 8 or knn_k < 1:
        raise InputError("epochs, batch size and k must be positive and the image size at least 8 px")
    device = torch.device(device)
    torch.manual_seed(seed)
    backbone = build_model(model, num_classes=0, pretrained=pretrained, weights=weights).to(device)
    dataset = _image_folder(data, image_size, backbone)
    num_classes = len(dataset.classes)
    if num_classes < 2 or len(dataset) < 4:
        raise InputError(f"{data} needs at least 2 classes and 4 images, found {num_classes} and {len(dataset)}")
    train_set, test_set = alternate_split(dataset)
    eval_train, eval_test = (_loader(s, batch_size, workers, seed) for s in (train_set, test_set))

    # Frozen backbone: features once, then the two cheap probes.
    train_x, train_y = _features(backbone, eval_train, device)
    test_x, test_y = _features(backbone, eval_test, device)
    probe = linear_probe_accuracy(train_x, train_y, test_x, test_y, num_classes)
    knn = knn_accuracy(train_x, train_y, test_x, test_y, num_classes, knn_k)
    del backbone

    # The paper's protocol: the whole network with a new linear classifier, fine-tuned.
    torch.manual_seed(seed)
    net = build_model(model, num_classes=num_classes, pretrained=pretrained, weights=weights).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    train_loader = _loader(train_set, batch_size, workers, seed, shuffle=True)
    accuracy_after_epoch = {}
    for epoch in range(1, epochs + 1):
        net.train()
        for images, labels in train_loader:
            loss = F.cross_entropy(net(images.to(device)), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        accuracy_after_epoch[str(epoch)] = _accuracy(net, eval_test, device)

    return {
        "task": "transfer",
        "model": model,
        "pretrained": pretrained and weights is None,
        "weights": os.fspath(weights) if weights is not None else None,
        "data": os.fspath(data),
        "classes": list(dataset.classes),
        "num_classes": num_classes,
        "num_train": len(train_set),
        "num_test": len(test_set),
        "image_size": image_size,
        "seed": seed,
        "protocol": f"{PROTOCOL} Adam learning rate {lr:g}, batch {batch_size}, {epochs} epochs.",
        "finetune": {"lr": lr, "batch_size": batch_size, "epochs": epochs,
                     "accuracy_after_epoch": accuracy_after_epoch},
        "linear_probe": {"accuracy": probe,
                         "method": "logistic regression (L-BFGS, L2 1e-4) on standardised pooled features"},
        "knn": {"k": knn_k, "accuracy": knn, "method": "cosine similarity, similarity-weighted vote"},
    }


def cli_transfer(args: argparse.Namespace) -> int:
    from .reports import transfer_markdown, write_json, write_text

    results = evaluate_transfer(
        args.model, args.data, pretrained=args.pretrained, weights=args.weights, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, image_size=args.image_size, seed=args.seed, device=args.device,
        workers=args.workers, knn_k=args.knn_k,
    )
    out = Path(args.out)
    write_json(out / "transfer.json", results)
    markdown = transfer_markdown(results)
    write_text(out / "transfer.md", markdown)
    print(markdown)
    return 0
