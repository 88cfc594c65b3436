"""``soundingearth-zoo embed`` and ``search``: files in, embeddings (or a ranking) out.

Inputs are files or folders (searched recursively for the tower's modality). A file that cannot be decoded is
skipped and listed on stderr, and the rest is embedded; a missing path, or no input at all, is an InputError.
Embeddings are written atomically as an ``.npz`` with ``keys`` (file stems), ``paths`` and ``embeddings``
(float32, one row per key).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .atomic import atomic_path
from .audio import FrontendConfig, read_windows
from .errors import InputError
from .images import eval_transform, load_image
from .models import AUDIO_MODEL, EMBED_DIM, check_model_name
from .pair import AudioVisualPair, create_tower, encode_clips, tower_frontend

__all__ = [
    "AUDIO_SUFFIXES",
    "IMAGE_SUFFIXES",
    "audio_io",
    "cli_embed",
    "cli_search",
    "collect_files",
    "embed_files",
    "image_io",
    "save_embeddings",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
AUDIO_SUFFIXES = frozenset({".mp3", ".flac", ".ogg", ".wav"})


def collect_files(inputs: Sequence[str | os.PathLike], suffixes: frozenset[str]) -> list[Path]:
    """Files named on the command line as given, folders expanded to their files with ``suffixes`` (sorted)."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            raise InputError(f"no such file or folder: {item}")
    if not files:
        raise InputError(f"no {'/'.join(sorted(suffixes))} files in {', '.join(map(str, inputs))}")
    return files


class _Files(Dataset):
    """Decodes one file per item; a decoding error is returned, not raised, so the batch goes on without it."""

    def __init__(self, files: Sequence[Path], load: Callable[[Path], Any]):
        self.files, self.load = files, load

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        try:
            return index, self.load(self.files[index]), None
        except InputError as err:
            return index, None, str(err)


def embed_files(
    files: Sequence[Path],
    load: Callable[[Path], Any],
    encode: Callable[[list[Any]], torch.Tensor],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    workers: int = 0,
) -> tuple[list[Path], torch.Tensor, list[str]]:
    """Decode ``files`` with ``load`` (in ``workers`` processes) and embed them ``batch_size`` at a time with
    ``encode``, under bf16 autocast on CUDA. Returns the embedded files, their ``[N, D]`` float32 embeddings and
    one message per skipped file."""
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, not {batch_size}")
    device = torch.device(device)
    loader = DataLoader(_Files(files, load), batch_size=batch_size, num_workers=workers, collate_fn=list)
    kept, chunks, skipped = [], [], []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast, tqdm(total=len(files), unit="file", file=sys.stderr) as progress:
        for batch in loader:
            skipped += [message for _, _, message in batch if message is not None]
            good = [(index, item) for index, item, message in batch if message is None]
            if good:
                chunks.append(encode([item for _, item in good]).float().cpu())
                kept += [files[index] for index, _ in good]
            progress.update(len(batch))
    return kept, torch.cat(chunks) if chunks else torch.empty(0, EMBED_DIM), skipped


def _load_image_tensor(path: Path, transform: Callable) -> torch.Tensor:
    return transform(load_image(path))


def _encode_images(tower: nn.Module, images: list[torch.Tensor]) -> torch.Tensor:
    return tower(torch.stack(images).to(next(tower.parameters()).device))


def image_io(tower: nn.Module) -> tuple[Callable, Callable]:
    """``load`` and ``encode`` of ``embed_files`` for an image tower (picklable, for worker processes)."""
    load = functools.partial(_load_image_tensor, transform=eval_transform(tower))
    return load, functools.partial(_encode_images, tower)


def audio_io(
    tower: nn.Module, frontend: FrontendConfig, batch_size: int, max_windows: int | None = None
) -> tuple[Callable, Callable]:
    """``load`` and ``encode`` of ``embed_files`` for an audio tower: a clip's windows, then their mean embedding."""
    load = functools.partial(read_windows, cfg=frontend, max_windows=max_windows)
    return load, functools.partial(encode_clips, tower, batch_size=batch_size)


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: CUDA is not available here")
    return device


def _report_skipped(verb: str, skipped: list[str], total: int) -> None:
    if skipped:
        print(f"soundingearth-zoo {verb}: skipped {len(skipped)} of {total} unreadable inputs:", file=sys.stderr)
        for message in skipped:
            print(f"  {message}", file=sys.stderr)


def save_embeddings(path: str | os.PathLike, files: Sequence[Path], embeddings: torch.Tensor) -> Path:
    """Write the ``.npz`` next to its destination, then rename it over it: a crash never leaves half a file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            keys=np.array([p.stem for p in files], dtype=str),
            paths=np.array([str(p) for p in files], dtype=str),
            embeddings=embeddings.numpy().astype(np.float32),
        )
    return Path(path)


def cli_embed(args: argparse.Namespace) -> int:
    name = check_model_name(args.model)
    audio = name.partition(".")[0] == AUDIO_MODEL
    files = collect_files(args.inputs, AUDIO_SUFFIXES if audio else IMAGE_SUFFIXES)
    device = _device(args.device)
    tower = create_tower(name, pretrained=not args.no_pretrained, weights=args.weights).eval().to(device)
    if audio:
        frontend = tower_frontend(tower, not args.no_pretrained, args.weights)
        load, encode = audio_io(tower, frontend, args.batch_size, args.max_windows)
    else:
        load, encode = image_io(tower)
    kept, embeddings, skipped = embed_files(files, load, encode, args.batch_size, device, args.workers)
    _report_skipped("embed", skipped, len(files))
    if not kept:
        raise InputError(f"none of the {len(files)} inputs could be read")
    out = save_embeddings(args.out, kept, embeddings)
    print(f"wrote {len(kept)} embeddings ({embeddings.shape[1]}-d) to {out}", file=sys.stderr)
    return 0


def cli_search(args: argparse.Namespace) -> int:
    query = Path(args.query)
    if not query.is_file():
        raise InputError(f"no such file: {query}")
    if query.suffix.lower() in AUDIO_SUFFIXES:
        query_is_audio = True
    elif query.suffix.lower() in IMAGE_SUFFIXES:
        query_is_audio = False
    else:
        raise InputError(f"{query}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))}) nor audio file")
    candidates = collect_files(args.candidates, IMAGE_SUFFIXES if query_is_audio else AUDIO_SUFFIXES)
    device = _device(args.device)
    pair = AudioVisualPair.from_pretrained(
        args.model, not args.no_pretrained, args.image_weights, args.audio_weights
    ).to(device)
    audio, image = audio_io(pair.audio, pair.frontend_config, args.batch_size), image_io(pair.image)
    query_io, candidate_io = (audio, image) if query_is_audio else (image, audio)
    query_kept, query_embedding, query_failed = embed_files([query], *query_io, batch_size=1, device=device)
    if not query_kept:
        raise InputError(query_failed[0])
    kept, embeddings, skipped = embed_files(candidates, *candidate_io, batch_size=args.batch_size, device=device)
    _report_skipped("search", skipped, len(candidates))
    if not kept:
        raise InputError(f"none of the {len(candidates)} candidates could be read")
    distances = -pair.similarity(query_embedding, embeddings)[0]
    order = distances.argsort()[: args.top_k]
    for rank, index in enumerate(order.tolist(), start=1):
        print(f"{rank}\t{distances[index]:.4f}\t{kept[index]}")
    return 0
