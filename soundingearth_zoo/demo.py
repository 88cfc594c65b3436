"""``soundingearth-zoo demo DIR``: the whole method, end to end, on a laptop's CPU in a few minutes.

1. a synthetic archive in the SoundingEarth layout (``demo_data``: six scene types whose tiles and recordings share
   a look and a sound, plus per-item latents that tie each tile to its own recording);
2. its conversion into training shards (``prepare``);
3. training of both towers with the batch triplet loss (``train``), the real ResNet-18 architectures on smaller
   inputs than the paper's (64 px images, 64x64 log-mel windows) so that a CPU gets through enough epochs;
4. image-to-audio and audio-to-image retrieval on the held-out test split, beside chance level;
5. export of both towers as Hub folders (``export``), reloaded with plain timm (``local-dir:``), which must give
   the embeddings of the trained towers.

Everything lands in ``DIR``; the summary is printed and written to ``DIR/report.json`` with the time of each stage.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch.utils.data import DataLoader

from .audio import FrontendConfig
from .checkpoint import load_checkpoint
from .demo_data import make_demo_archive
from .export import export_checkpoint
from .prepare import PreparedDataset, prepare_archive
from .reports import write_json
from .retrieval import read_coordinates, retrieval_metrics
from .train import Towers, TrainConfig, build_towers, embed_split, train

__all__ = ["DemoSettings", "cli_demo", "run_demo", "summary"]

# Embeddings of the reloaded towers must match the trained ones to float32 round-off.
RELOAD_TOLERANCE = 1e-5
KS = (1, 5, 10)


@dataclass(frozen=True)
class DemoSettings:
    """What the demo builds and trains. The defaults learn clearly in about five minutes on two CPU cores."""

    num_items: int = 240  # 168 train, 24 validation, 48 test pairs
    seed: int = 0
    image_size: int = 64  # training and evaluation crops (the paper's 192 px costs 9x more)
    window: int = 64  # mel bands and frames of a log-mel window (the paper's 128 costs 4x more)
    epochs: int = 30
    batch_size: int = 32
    workers: int = 0  # loader processes; on two cores the towers want both


@contextlib.contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 2)


def _load_towers(checkpoint: Path, cfg: TrainConfig) -> Towers:
    ckpt = load_checkpoint(checkpoint)
    towers = build_towers(cfg)
    towers.image.load_state_dict(ckpt["image_state_dict"])
    towers.audio.load_state_dict(ckpt["audio_state_dict"])
    return towers.eval()


def _test_retrieval(towers: Towers, test_set: PreparedDataset, archive: Path, cfg: TrainConfig) -> dict[str, Any]:
    """``retrieval.retrieval_metrics`` of the test split, with the places' coordinates from the archive."""
    image_emb, audio_emb, keys = embed_split(towers, test_set, cfg.batch_size, torch.device("cpu"))
    coords = read_coordinates(archive / "metadata.csv", [str(k) for k in keys])
    results = retrieval_metrics(image_emb, audio_emb, coords=coords, ks=KS)
    results["source"] = {"model": f"{cfg.image_model}.{cfg.objective} (demo run)", "split": "test",
                         "archive": str(archive)}
    return results


@torch.no_grad()
def _reload_difference(folders: dict[str, Path], towers: Towers, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest absolute difference between the embeddings of the exported towers, loaded by plain timm, and those
    of the trained ones, on a batch of test inputs."""
    differences = {}
    for role in ("image", "audio"):
        reloaded = timm.create_model(f"local-dir:{folders[role]}", pretrained=True).eval()
        trained = getattr(towers, role)
        differences[role] = float((reloaded(batch[role]) - trained(batch[role])).abs().max())
    return differences


def run_demo(out: str | os.PathLike, settings: DemoSettings = DemoSettings()) -> dict[str, Any]:
    """Run every stage into ``out`` and return the report (also written to ``out/report.json``). Running it again
    on the same folder reuses the prepared shards and the finished training run."""
    out = Path(out)
    timings: dict[str, float] = {}
    frontend = FrontendConfig(n_mels=settings.window, window_frames=settings.window)
    cfg = TrainConfig(
        data=str(out / "prepared"),
        out=str(out / "run"),
        image_size=settings.image_size,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        workers=settings.workers,
        seed=settings.seed,
        precision="fp32",
        checkpoint_every=10**9,  # the final step only
        log_every=10,
    )
    started = time.perf_counter()
    with _stage(timings, "make_data"):
        archive = make_demo_archive(out / "archive", settings.num_items, settings.seed)
    with _stage(timings, "prepare"):
        prepared = prepare_archive(archive, cfg.data, frontend)
    with _stage(timings, "train"):
        checkpoint = train(cfg, resume=True)
    with _stage(timings, "evaluate"):
        towers = _load_towers(checkpoint, cfg)
        test_set = PreparedDataset(cfg.data, "test", train=False, image_size=cfg.image_size)
        results = _test_retrieval(towers, test_set, archive, cfg)
        write_json(out / "retrieval.json", results)
    with _stage(timings, "export"):
        command = f"soundingearth-zoo demo {out}"
        folders = export_checkpoint(checkpoint, out / "export", [out / "retrieval.json"], command)
    with _stage(timings, "reload"):
        differences = _reload_difference(folders, towers, next(iter(DataLoader(test_set, batch_size=8))))
    timings["total"] = round(time.perf_counter() - started, 2)

    num_pairs = results["num_pairs"]
    directions = ("image_to_audio", "audio_to_image")
    report = {
        "data": {
            "items": prepared["items"],
            "pairs_per_split": prepared["written_per_split"],
            "skipped": prepared["skipped"],
        },
        "training": {
            "checkpoint": str(checkpoint),
            "steps": load_checkpoint(checkpoint)["step"],
            **{name: getattr(cfg, name) for name in ("image_model", "audio_model", "objective", "epochs",
                                                     "batch_size", "lr", "image_size")},
            "audio_window": [frontend.n_mels, frontend.window_frames],
        },
        "test_retrieval": {
            "num_pairs": num_pairs,
            "recall_definition": results["recall_definition"],
            **{
                direction: {f"recall@{k}": results[direction][f"recall@{k}"] for k in KS}
                | {"median_rank": results[direction]["median_rank"]}
                for direction in directions
            },
            "chance": {f"recall@{k}": k / num_pairs for k in KS} | {"median_rank": (num_pairs + 1) / 2},
        },
        "export": {role: str(folder) for role, folder in folders.items()},
        "reload": {
            "loader": "timm.create_model('local-dir:<folder>', pretrained=True)",
            "max_abs_difference": differences,
            "same_embeddings": all(d <= RELOAD_TOLERANCE for d in differences.values()),
        },
        "timings_s": timings,
        "machine": {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "settings": dataclasses.asdict(settings),
    }
    write_json(out / "report.json", report)
    return report


def summary(report: dict[str, Any]) -> str:
    """The report in a few lines."""
    training, retrieval, reload = report["training"], report["test_retrieval"], report["reload"]
    chance = retrieval["chance"]
    lines = [
        f"trained {training['image_model']} + {training['audio_model']} ({training['objective']}) for "
        + f"{training['steps']} steps on {report['data']['pairs_per_split']['train']} pairs",
        f"test retrieval over {retrieval['num_pairs']} held-out pairs ({retrieval['recall_definition']}):",
    ]
    for direction in ("image_to_audio", "audio_to_image"):
        scores = retrieval[direction]
        recalls = ", ".join(f"R@{k} {scores[f'recall@{k}']:.1%} (chance {chance[f'recall@{k}']:.1%})" for k in KS)
        median = f"median rank {scores['median_rank']:g} (chance {chance['median_rank']:g})"
        lines.append(f"  {direction.replace('_', ' ')}: {recalls}, {median}")
    verdict = "same" if reload["same_embeddings"] else "DIFFERENT"
    worst = max(reload["max_abs_difference"].values())
    lines.append(f"exported to {', '.join(report['export'].values())}")
    lines.append(f"reloaded with plain timm: {verdict} embeddings (max |difference| {worst:.2g})")
    lines.append("time: " + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in report["timings_s"].items()))
    return "\n".join(lines)


def cli_demo(args: argparse.Namespace) -> int:
    """``soundingearth-zoo demo DIR``; exit code 1 if the reloaded towers disagree with the trained ones."""
    given = {name: getattr(args, name, None) for name in ("num_items", "epochs", "seed")}
    settings = DemoSettings(**{name: value for name, value in given.items() if value is not None})
    report = run_demo(args.out, settings)
    print(summary(report))
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0 if report["reload"]["same_embeddings"] else 1
