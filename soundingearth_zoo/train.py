"""Audiovisual pre-training: one config, one loop, on a laptop's CPU or on many GPUs under torchrun.

Both towers are timm models trained from scratch with Adam on one of the paper's objectives (``losses``); under
``torchrun`` every rank embeds its share of the batch and the loss is that of the global batch (the embeddings are
gathered with gradients), with BatchNorm synchronised across GPUs, so N GPUs x B samples train like one with N x B.

Runs are resumable exactly: the order of the training items is a pure function of ``(seed, epoch)`` and every
item's augmentation draws from a generator seeded by ``(seed, epoch, index)``, so a run resumed from the checkpoint
of step k sees the same batches, with the same augmentations, as the run that was never stopped, whatever the
number of loader workers. A checkpoint (``checkpoint.py``) holds the towers, the optimizer, the step and the RNG
states, and loads with ``torch.load(weights_only=True)``.

Output folder: ``config.yaml``, ``checkpoints/step-XXXXXXXX.pt``, ``train_log.csv``, ``val_log.csv`` and
``tensorboard/``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import os
import time
import types
import typing
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import distributed
from .audio import FrontendConfig
from .augment import TrainAugment
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_atomic
from .errors import InputError
from .losses import build_loss
from .models import AUDIO_MODEL, IMAGE_MODELS, OBJECTIVES

if typing.TYPE_CHECKING:
    from .prepare import PreparedDataset

__all__ = [
    "PRESETS",
    "Towers",
    "TrainConfig",
    "build_optimizer",
    "build_towers",
    "cli_train",
    "embed_split",
    "epoch_batches",
    "evaluate_retrieval",
    "latest_checkpoint",
    "load_config",
    "train",
    "train_step",
]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
REDUCTIONS = ("mean", "sum")
SPLITS = ("train", "val", "test")
# Recall@k cut-offs logged after each epoch (the paper's, capped by the size of the split at evaluation time).
EVAL_KS = (1, 5, 10, 100)


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.yaml`` beside its checkpoints.

    The defaults are the paper's run with ResNet-18 and the batch triplet loss: batch 256, Adam at 1e-3 without
    weight decay, 300 epochs, 192 px images, one random 128-frame log-mel window per clip.
    """

    # What is trained.
    image_model: str = "soundingearth_resnet18"
    audio_model: str = AUDIO_MODEL
    objective: str = "batch_triplet"
    margin: float = 1.0  # batch_triplet and naive_triplet
    # batch_triplet: "mean" averages each direction and halves the sum, as the authors' released code (whose runs
    # the paper reports); "sum" adds every triplet, as the paper's Algorithm 1.
    reduction: str = "mean"
    temperature: float = 0.2  # contrastive; the released code's fixed value

    # Data: the output of ``soundingearth-zoo prepare``.
    data: str = ""
    eval_split: str = "val"
    image_size: int = 192  # training and evaluation crops; smaller sizes only to train fast on a CPU (demo, tests)
    augment: str = "code"  # "code": RandomResizedCrop(scale 0.5-1) as released; "paper": 192-384 px square crops
    # The audio front end the spectrograms were prepared with ({} = whatever the prepared data says); training
    # checks that the two agree and saves it with the audio tower.
    frontend: dict[str, Any] = field(default_factory=dict)
    workers: int = 4  # loader processes per rank

    # Optimisation. batch_size is the global batch, split evenly over the ranks.
    epochs: int = 300
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_steps: int | None = None  # stop early after this many optimizer steps (total, not per launch)
    seed: int = 0

    # Hardware. "auto" precision is bf16 autocast on GPUs and fp32 elsewhere.
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    # Under DDP on GPUs, BatchNorm normalises with the statistics of the global batch (SyncBatchNorm), which
    # makes N GPUs x B train exactly like one GPU with N x B. PyTorch has no SyncBatchNorm on the CPU: there each
    # rank normalises with its own B samples' statistics (the loss is still over the global batch).
    sync_batchnorm: bool = True

    # Output.
    out: str = "runs/soundingearth"
    checkpoint_every: int = 1000  # optimizer steps; the last step is always saved
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    log_every: int = 20  # optimizer steps between loss logs

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InputError (one line) for a setting no run could use."""
        if self.image_model not in IMAGE_MODELS:
            raise InputError(f"image_model must be one of {sorted(IMAGE_MODELS)}, got {self.image_model!r}")
        if self.audio_model != AUDIO_MODEL:
            raise InputError(f"audio_model must be {AUDIO_MODEL!r}, got {self.audio_model!r}")
        if self.objective not in OBJECTIVES:
            raise InputError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        for name, value, choices in (
            ("reduction", self.reduction, REDUCTIONS),
            ("precision", self.precision, PRECISIONS),
            ("eval_split", self.eval_split, SPLITS),
            ("augment", self.augment, ("code", "paper")),
        ):
            if value not in choices:
                raise InputError(f"{name} must be one of {list(choices)}, got {value!r}")
        for name in ("epochs", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every", "image_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"max_steps must be at least 1 (or None), got {self.max_steps}")
        if self.lr <= 0 or self.weight_decay < 0 or self.temperature <= 0 or self.workers < 0:
            raise InputError("lr and temperature must be positive, weight_decay and workers non-negative")
        if self.frontend:
            FrontendConfig.from_dict(self.frontend)  # unknown keys are an InputError

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict of plain values (a config file, a checkpoint's ``config``); unknown keys are errors."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        return cls(**{name: _checked(name, value) for name, value in values.items()})

    def with_overrides(self, overrides: Sequence[str]) -> TrainConfig:
        """A copy with ``key=value`` overrides, each value parsed as YAML and checked against the field's type."""
        values = self.to_dict()
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep:
                raise InputError(f"override {item!r} is not of the form key=value")
            if key not in values:
                raise InputError(f"unknown config key {key!r}; known: {', '.join(values)}")
            values[key] = _checked(key, text if _field_types()[key] is str else yaml.safe_load(text))
        return TrainConfig(**values)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _checked(name: str, value: Any) -> Any:
    """``value`` if it suits the field's type, else InputError. Where a float is expected an int is converted, and
    so is a string such as ``2e-4`` (YAML 1.1, PyYAML's dialect, reads exponents without a dot as strings)."""
    expected = _field_types()[name]
    allowed = typing.get_args(expected) if isinstance(expected, types.UnionType) else (expected,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        kind = typing.get_origin(kind) or kind
        if kind is float and not isinstance(value, bool):
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
        if kind is int and isinstance(value, bool):
            continue
        if kind is not type(None) and isinstance(value, kind):
            return value
    raise InputError(f"config key {name!r} expects {expected}, got {value!r}")


def load_config(
    path: str | Path | None = None, preset: str | None = None, overrides: Sequence[str] = ()
) -> TrainConfig:
    """A preset (or the defaults), then the values of a YAML/JSON file, then ``key=value`` overrides."""
    cfg = TrainConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        cfg = PRESETS[preset]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text())  # JSON is YAML
        except yaml.YAMLError as err:
            raise InputError(f"{path} is not a YAML or JSON file ({str(err).splitlines()[0]})") from err
        if not isinstance(values, dict):
            raise InputError(f"{path} must hold a mapping of config keys to values")
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **values})
    return cfg.with_overrides(overrides)


#: The paper's six runs (Table VII): each image backbone with each objective. Set ``data`` and ``out``.
PRESETS: dict[str, TrainConfig] = {
    f"{backbone}_{objective}": TrainConfig(
        image_model=name, objective=objective, out=f"runs/{name}.{objective}", batch_size=256, lr=1e-3, epochs=300
    )
    for name, backbone in IMAGE_MODELS.items()
    for objective in OBJECTIVES
}


class Towers(nn.Module):
    """The image and the audio tower as one module, so one DDP wrapper (and one compile) covers both."""

    def __init__(self, image: nn.Module, audio: nn.Module) -> None:
        super().__init__()
        self.image = image
        self.audio = audio

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(image), self.audio(audio)


def build_towers(cfg: TrainConfig) -> Towers:
    """Both towers from timm, randomly initialised (the paper trains from scratch)."""
    return Towers(timm.create_model(cfg.image_model), timm.create_model(cfg.audio_model))


def build_optimizer(cfg: TrainConfig, towers: nn.Module) -> torch.optim.Adam:
    """Adam, as the reference; its fused kernel where torch has one for the device (a CPU step then takes a fifth
    of the time of the default per-tensor loop)."""
    params = list(towers.parameters())
    try:
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except RuntimeError:  # torch before 2.4 fuses Adam on GPUs only
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _seed(*parts: int) -> int:
    """A 63-bit seed mixing every part, so neighbouring tuples give unrelated random streams."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


def epoch_batches(
    num_items: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This rank's share of every global batch of one epoch: a pure function of ``(seed, epoch)``.

    The items are shuffled once per epoch and cut into global batches of ``batch_size`` (the incomplete last one
    is dropped: the losses compare within a batch); rank r takes the r-th slice of each, so gathering the ranks'
    embeddings in rank order restores the global batch exactly.
    """
    if batch_size % world_size:
        raise InputError(f"batch_size {batch_size} is not divisible by the number of processes {world_size}")
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(_seed(seed, epoch))).tolist()
    per_rank = batch_size // world_size
    starts = range(0, num_items - batch_size + 1, batch_size)
    return [order[start + rank * per_rank : start + (rank + 1) * per_rank] for start in starts]


class _SeededItems(Dataset):
    """Items whose randomness is a pure function of ``(seed, epoch, index)``, whichever process loads them.

    The CPU's global torch RNG, which torchvision's random transforms draw from, is re-seeded for each item and
    restored afterwards.
    """

    def __init__(self, dataset: Dataset, seed: int, epoch: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_seed(self.seed, self.epoch, index))
            return self.dataset[index]


def train_step(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    augment: TrainAugment | None = None,
) -> torch.Tensor:
    """One optimizer step on a batch of pairs; returns the (detached) loss of the global batch.

    A batch with drawn augmentations (``batch["augment"]``, from a dataset with ``defer_augment=True``) is
    augmented here by ``augment``, on ``device``. The towers run under autocast when ``autocast_dtype`` is given;
    the loss is always computed in float32.
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    image = batch["image"].to(device, non_blocking=True)
    if "augment" in batch:
        if augment is None:
            raise ValueError("the batch holds drawn augmentations: pass the dataset's augment to apply them")
        image = augment.apply(image, batch["augment"])
    image = image.contiguous(memory_format=memory_format)
    audio = batch["audio"].to(device, non_blocking=True, memory_format=memory_format)
    with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext():
        image_emb, audio_emb = model(image, audio)
    loss = loss_fn(image_emb.float(), audio_emb.float())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def embed_split(
    towers: Towers,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Image and audio embeddings (float32, on the CPU) and keys of every pair of an evaluation dataset."""
    was_training = towers.training
    towers.eval()
    images, sounds, keys = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    for batch in loader:
        with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext():
            image_emb, audio_emb = towers(batch["image"].to(device), batch["audio"].to(device))
        images.append(image_emb.float().cpu())
        sounds.append(audio_emb.float().cpu())
        keys.extend(int(k) for k in batch["key"])
    towers.train(was_training)
    return torch.cat(images), torch.cat(sounds), keys


def evaluate_retrieval(image_emb: torch.Tensor, audio_emb: torch.Tensor, ks: Sequence[int] = EVAL_KS) -> dict:
    """Retrieval metrics of a split (``retrieval.retrieval_metrics``), with the cut-offs the split can support."""
    from .retrieval import retrieval_metrics

    return retrieval_metrics(image_emb, audio_emb, ks=[k for k in ks if k <= len(image_emb)] or [1])


def _scalar_metrics(metrics: dict) -> dict[str, float]:
    """The loggable numbers of ``retrieval_metrics``: ``image_to_audio/recall@1``, ..., median ranks."""
    scalars = {}
    for direction in ("image_to_audio", "audio_to_image"):
        for name, value in metrics[direction].items():
            if name.startswith("recall@") or name == "median_rank":
                scalars[f"{direction}/{name}"] = float(value)
    return scalars


def latest_checkpoint(out: str | Path) -> Path | None:
    """The checkpoint of the highest step in a run's folder, or None."""
    paths = sorted((Path(out) / "checkpoints").glob("step-*.pt"))
    return paths[-1] if paths else None


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else None


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class _Logs:
    """CSV files and TensorBoard events of rank 0. On resume, rows past the resumed step are dropped, so the
    logs read as those of one uninterrupted run."""

    FILES = ("train_log.csv", "val_log.csv")

    def __init__(self, out: Path, resumed_step: int, active: bool) -> None:
        self.out = out
        self.active = active
        if not active:
            return
        from torch.utils.tensorboard import SummaryWriter

        for name in self.FILES:
            path = out / name
            if path.exists():
                with path.open(newline="") as f:
                    rows = [row for row in csv.DictReader(f) if int(row["step"]) <= resumed_step]
                self._rewrite(path, rows)
        self.tensorboard = SummaryWriter(out / "tensorboard", purge_step=resumed_step + 1 if resumed_step else None)

    @staticmethod
    def _rewrite(path: Path, rows: list[dict[str, Any]]) -> None:
        fields = list(rows[0]) if rows else []
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            if rows:
                writer.writeheader()
                writer.writerows(rows)

    def write(self, name: str, step: int, epoch: int, values: dict[str, float]) -> None:
        if not self.active:
            return
        path = self.out / f"{name}_log.csv"
        row = {"step": step, "epoch": epoch, **values}
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        for key, value in values.items():
            self.tensorboard.add_scalar(f"{name}/{key}", value, step)

    def close(self) -> None:
        if self.active:
            self.tensorboard.close()


def _open_datasets(cfg: TrainConfig, world_size: int) -> tuple[PreparedDataset, PreparedDataset, FrontendConfig]:
    """The prepared training split (augmented, one random window per clip), the evaluation split and the front end
    the spectrograms were computed with."""
    from .prepare import PreparedDataset

    if not cfg.data:
        raise InputError("no training data: set data=DIR, a folder written by `soundingearth-zoo prepare`")
    train_set = PreparedDataset(cfg.data, "train", train=True, augment=cfg.augment, image_size=cfg.image_size,
                                defer_augment=True)  # the loader decodes, the training device augments
    eval_set = PreparedDataset(cfg.data, cfg.eval_split, train=False, image_size=cfg.image_size)
    frontend = train_set.frontend
    if cfg.frontend and FrontendConfig.from_dict(cfg.frontend) != frontend:
        raise InputError(f"frontend {cfg.frontend} differs from the one {cfg.data} was prepared with: {frontend}")
    if len(train_set) < cfg.batch_size:
        raise InputError(f"the training split of {cfg.data} has {len(train_set)} items, fewer than one batch")
    return train_set, eval_set, frontend


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train both towers as ``cfg`` says and return the path of the final checkpoint.

    Under torchrun each process calls this; rank 0 writes the config, the logs and the checkpoints. With
    ``resume`` the newest checkpoint in ``cfg.out`` is loaded (its run must have the same models and objective)
    and training continues from its step as if never interrupted.
    """
    started_group = not distributed.is_distributed()
    device = distributed.init_from_env()
    started_group = started_group and distributed.is_distributed()
    rank, world_size = distributed.rank(), distributed.world_size()
    try:
        return _train(cfg, resume, device, rank, world_size)
    finally:
        if started_group:
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, resume: bool, device: torch.device, rank: int, world_size: int) -> Path:
    out = Path(cfg.out)
    train_set, eval_set, frontend = _open_datasets(cfg, world_size)
    steps_per_epoch = len(train_set) // cfg.batch_size
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    torch.manual_seed(cfg.seed)
    towers = build_towers(cfg).to(device)
    optimizer = build_optimizer(cfg, towers)
    # The losses since the last log line (sum, count), kept in checkpoints so a resumed run logs the same means.
    step, loss_window = 0, torch.zeros(2, device=device)
    if (path := latest_checkpoint(out)) is not None:
        if not resume:
            raise InputError(f"{out} already holds checkpoints: pass --resume to continue, or choose another out")
        step = _restore(path, cfg, towers, optimizer, loss_window, device)
    if cfg.channels_last:
        towers.to(memory_format=torch.channels_last)
    model: nn.Module = towers
    if world_size > 1:
        if cfg.sync_batchnorm and device.type == "cuda":
            # Converted after loading: SyncBatchNorm keeps BatchNorm's parameter and buffer names.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(towers)
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    raw = model.module if isinstance(model, DistributedDataParallel) else model  # the towers, unwrapped
    if cfg.compile:
        model = torch.compile(model)
    loss_fn = build_loss(cfg.objective, **_loss_options(cfg)).to(device)
    autocast_dtype = _autocast_dtype(cfg, device)

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        TrainConfig.from_dict(cfg.to_dict() | {"frontend": frontend.to_dict()}).save(out / "config.yaml")
    logs = _Logs(out, step, active=rank == 0)
    progress = tqdm(total=total_steps, initial=step, disable=rank != 0, desc="train", unit="step", dynamic_ncols=True)
    tick, tick_step = time.perf_counter(), step
    model.train()
    while step < total_steps:
        epoch, done = divmod(step, steps_per_epoch)
        loader = DataLoader(
            _SeededItems(train_set, cfg.seed, epoch),
            batch_sampler=epoch_batches(len(train_set), cfg.batch_size, cfg.seed, epoch, rank, world_size)[done:],
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
        )
        for batch in loader:
            loss_window[0] += train_step(model, loss_fn, optimizer, batch, device, autocast_dtype, cfg.channels_last,
                                         train_set.augment)
            loss_window[1] += 1
            step += 1
            progress.update()
            if step % cfg.log_every == 0 or step == total_steps:
                mean_loss = float(loss_window[0] / loss_window[1])
                rate = (step - tick_step) * cfg.batch_size / (time.perf_counter() - tick)
                logs.write("train", step, epoch, {"loss": mean_loss, "lr": cfg.lr, "samples_per_s": rate})
                progress.set_postfix(loss=f"{mean_loss:.4f}", epoch=epoch)
                loss_window.zero_()
                tick, tick_step = time.perf_counter(), step
            if step % steps_per_epoch == 0:
                _evaluate(cfg, raw, eval_set, device, autocast_dtype, logs, step, epoch, rank)
            if rank == 0 and (step % cfg.checkpoint_every == 0 or step == total_steps):
                _save(out, cfg, frontend, raw, optimizer, step, steps_per_epoch, loss_window, device)
            if step == total_steps:
                break
    progress.close()
    logs.close()
    return out / "checkpoints" / f"step-{total_steps:08d}.pt"


def _loss_options(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.objective == "contrastive":
        return {"temperature": cfg.temperature}
    if cfg.objective == "batch_triplet":
        return {"margin": cfg.margin, "reduction": cfg.reduction}
    return {"margin": cfg.margin}


def _evaluate(
    cfg: TrainConfig,
    towers: Towers,
    eval_set: Dataset,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    logs: _Logs,
    step: int,
    epoch: int,
    rank: int,
) -> None:
    """Retrieval on the evaluation split after an epoch, by rank 0 (the others wait)."""
    if rank == 0 and len(eval_set):
        image_emb, audio_emb, _ = embed_split(towers, eval_set, cfg.batch_size, device, cfg.workers, autocast_dtype)
        metrics = _scalar_metrics(evaluate_retrieval(image_emb, audio_emb))
        logs.write("val", step, epoch, metrics)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    if distributed.is_distributed():
        torch.distributed.barrier()


def _save(
    out: Path,
    cfg: TrainConfig,
    frontend: FrontendConfig,
    towers: Towers,
    optimizer: torch.optim.Optimizer,
    step: int,
    steps_per_epoch: int,
    loss_window: torch.Tensor,
    device: torch.device,
) -> Path:
    """Write the checkpoint of ``step`` atomically and drop all but the newest ``keep_checkpoints``."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict() | {"frontend": frontend.to_dict()},
        "frontend": frontend.to_dict(),
        "image_state_dict": towers.image.state_dict(),
        "audio_state_dict": towers.audio.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "epoch": step / steps_per_epoch,  # fractional: epochs completed
        "rng": _rng_state(device),
        "loss_window": loss_window.cpu(),
    }
    path = save_atomic(checkpoint, out / "checkpoints" / f"step-{step:08d}.pt")
    for old in sorted((out / "checkpoints").glob("step-*.pt"))[: -cfg.keep_checkpoints]:
        old.unlink()
    return path


def _restore(
    path: Path,
    cfg: TrainConfig,
    towers: Towers,
    optimizer: torch.optim.Optimizer,
    loss_window: torch.Tensor,
    device: torch.device,
) -> int:
    """Load a checkpoint into the towers, the optimizer and the loss window; returns its step."""
    checkpoint = load_checkpoint(path, map_location=device)
    for key in ("image_model", "audio_model", "objective"):
        if checkpoint["config"][key] != getattr(cfg, key):
            raise InputError(
                f"cannot resume from {path}: its {key} is {checkpoint['config'][key]!r}, not {getattr(cfg, key)!r}"
            )
    towers.image.load_state_dict(checkpoint["image_state_dict"])
    towers.audio.load_state_dict(checkpoint["audio_state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    loss_window.copy_(checkpoint["loss_window"])
    _set_rng_state({k: v.cpu() for k, v in checkpoint["rng"].items()}, device)
    log.info("resumed from %s (step %d)", path, checkpoint["step"])
    return int(checkpoint["step"])


def cli_train(args: argparse.Namespace) -> int:
    """``soundingearth-zoo train [--preset NAME] [--config FILE] [--resume] [key=value ...]``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.config, args.preset, args.overrides)
    path = train(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # torchrun's rank (train() has left the process group by now)
        print(path)
    return 0
