"""Cross-modal retrieval: how well image and audio embeddings of the same place find each other.

For every image the audio clips are ranked by L2 distance in the embedding space (and the other way round); the
metrics are the rank of the true partner, Recall@k, the median rank and, given coordinates, how far (haversine km)
the nearest of the top k retrievals lies from the query's place. The distance matrix is never held whole, so the
whole archive (about 50,000 pairs) fits in memory: the ranks of both directions come from one pass over square
tiles of it (one matrix product per tile, each entry compared along its row and down its column), the top k from
blocks of query rows, all on the embeddings' device.

Two conventions of the authors' evaluation code are available as options and named in every result:
``normalise=True`` divides each image's distances by its mean distance to all audio (the reference code's division of
the distance matrix by its column means), and ``rank_convention="lt"`` counts a hit at ``rank < k`` (1-based ranks,
that is the top k-1) instead of ``rank <= k``.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import InputError

__all__ = [
    "ArchiveEmbeddings",
    "DEFAULT_KS",
    "DIRECTIONS",
    "RANK_CONVENTIONS",
    "cli_retrieval",
    "embed_archive_split",
    "gallery_rows",
    "haversine_km",
    "load_embeddings",
    "nearest_km_of_top_k",
    "pair_embeddings",
    "read_coordinates",
    "retrieval_metrics",
    "true_partner_ranks",
]

#: The paper's cut-offs for Recall@k (and for the geographic distance to the nearest of the top k).
DEFAULT_KS = (1, 5, 10, 100, 500, 1000)
#: Query modality to candidate modality.
DIRECTIONS = ("image_to_audio", "audio_to_image")
#: How Recall@k counts a hit, by option value.
RANK_CONVENTIONS = {
    "le": "rank <= k",
    "lt": "rank < k (the reference code's convention: the top k-1)",
}
EARTH_RADIUS_KM = 6371.0
TIES = "ties counted against the model: a candidate exactly as close as the true partner ranks ahead of it"
# Largest side of the square tiles of the distance matrix that the ranks are counted in. On a CPU, 512 ran as fast as
# any side from 256 to 2,560 (measured) and a tile (1 MB) stays in cache from the matrix product to the two
# comparisons that read it back; on a GPU, larger tiles mean fewer kernel launches.
_TILE = 512
_GPU_TILE = 4096
# Entries of one block of query rows for the top-k retrievals: 2**22 float32 values (16 MB) stay in cache between
# the matrix product and the top-k that reads them back (twice as fast on a CPU as 128 MB blocks, measured).
_CHUNK_ELEMENTS = 1 << 22


def haversine_km(lat1: torch.Tensor, lon1: torch.Tensor, lat2: torch.Tensor, lon2: torch.Tensor) -> torch.Tensor:
    """Great-circle distance in km between points given in degrees (broadcasting, spherical Earth of 6,371 km)."""
    lat1, lon1, lat2, lon2 = (torch.deg2rad(t.double()) for t in (lat1, lon1, lat2, lon2))
    a = torch.sin((lat2 - lat1) / 2) ** 2 + torch.cos(lat1) * torch.cos(lat2) * torch.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(a.clamp(0.0, 1.0)))


def _as_embeddings(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach()
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"{name} must be a non-empty [N, D] matrix, got shape {tuple(x.shape)}")
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contain NaN or infinite values")
    return x


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _augmented(queries: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``[q, |q|^2, 1]`` and ``[-2c, 1, |c|^2]``, whose dot product is the squared L2 distance ``|q - c|^2``:
    one matrix product gives a block of distances, each a function of its two embeddings alone (no per-row or
    per-column term added afterwards), so the same matrix serves both query directions."""
    q_sq = queries.square().sum(dim=1, keepdim=True)
    c_sq = candidates.square().sum(dim=1, keepdim=True)
    return (torch.cat([queries, q_sq, torch.ones_like(q_sq)], dim=1),
            torch.cat([-2 * candidates, torch.ones_like(c_sq), c_sq], dim=1))


def _distance_tiles(image: torch.Tensor, audio: torch.Tensor) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """Square tiles ``(image rows, audio columns, squared L2 distances)`` covering the whole distance matrix once,
    the diagonal tiles first, so that both directions know every true partner's distance before any other tile.

    Every tile is one matrix product of the same shape (the embeddings are zero-padded to a whole number of tiles):
    a BLAS picks its code path by shape, and one path gives a pair of embeddings the same float wherever the pair
    lies, so exact ties stay ties (one dot product computed by products of two shapes can differ in the last bit).
    The tile is a view of one reused buffer, valid until the next tile; the caller may overwrite it.
    """
    num = len(image)
    side = _TILE if image.device.type == "cpu" else _GPU_TILE
    size = _ceil_div(num, _ceil_div(num, side))  # equal tiles as small as that many tiles allow ...
    size = _ceil_div(size, 8) * 8  # ... with sides a multiple of 8: BLAS kernels ran sides like 1250 at half speed
    count = _ceil_div(num, size)
    x, y = (torch.nn.functional.pad(t, (0, 0, 0, count * size - num)) for t in _augmented(image, audio))
    buffer = x.new_empty(size, size)
    spans = [slice(i * size, min((i + 1) * size, num)) for i in range(count)]
    order = [(i, i) for i in range(count)] + [(i, j) for i in range(count) for j in range(count) if i != j]
    for i, j in order:
        torch.mm(x[i * size:(i + 1) * size], y[j * size:(j + 1) * size].T, out=buffer)
        rows, cols = spans[i], spans[j]
        yield rows, cols, buffer[:rows.stop - rows.start, :cols.stop - cols.start]


def _mean_distance_per_image(image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """Each image's mean L2 distance to all audio clips (summed in float64: 50,000 terms a row)."""
    total = torch.zeros(len(image), dtype=torch.float64, device=image.device)
    for rows, _, dist in _distance_tiles(image, audio):
        total[rows] += dist.clamp_min_(0).sqrt_().sum(dim=1)
    return (total / len(audio)).to(image.dtype)


@torch.no_grad()
def true_partner_ranks(image: torch.Tensor, audio: torch.Tensor, image_scale: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of the true partner (row ``i`` of the other modality) by L2 distance, image to audio and audio
    to image, ties counted against the model, from one pass over the distance matrix.

    Image ``i``'s rank is the number of audio clips at a squared distance <= its partner's (itself included): a
    count along row ``i``; audio ``j``'s is the count down column ``j``, of distances divided by each image's
    ``image_scale`` if given. Every count compares entries with the very float of the partner's entry, so exact ties
    stay ties. Hits are counted as 0/1 floats (exact: at most a tile side per tile, summed in float64), because
    summing a bool tensor is four times slower on a CPU than comparing and summing floats (measured).
    """
    num = len(image)
    partner_i2a, partner_a2i = image.new_empty(num), image.new_empty(num)
    i2a, a2i = (torch.zeros(num, dtype=torch.float64, device=image.device) for _ in range(2))
    hits = None  # one reused buffer, the size of a whole tile (the first tile is one)
    for rows, cols, dist in _distance_tiles(image, audio):
        if hits is None:
            hits = torch.empty_like(dist)
        diagonal = rows == cols
        if diagonal:
            partner_i2a[rows] = dist.diagonal()
        i2a[rows] += torch.le(dist, partner_i2a[rows, None], out=hits[:len(dist), :dist.shape[1]]).sum(dim=1)
        if image_scale is not None:
            dist = dist.clamp_min_(0).sqrt_().div_(image_scale[rows, None])
        if diagonal:
            partner_a2i[cols] = dist.diagonal()
        a2i[cols] += torch.le(dist, partner_a2i[None, cols], out=dist).sum(dim=0)
    return i2a.long(), a2i.long()


@torch.no_grad()
def nearest_km_of_top_k(queries: torch.Tensor, candidates: torch.Tensor, coords: torch.Tensor, ks: Sequence[int],
                        candidate_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, len(ks)]``: for each query, the haversine km from its place to the nearest place among its top k
    retrievals by L2 distance (divided by ``candidate_scale`` if given), for each k of ``ks``; ``coords`` ([N, 2]
    latitude, longitude in degrees) are shared by the two members of a pair. Needs whole rows (a top k per query),
    so it runs over blocks of query rows of ``_CHUNK_ELEMENTS`` entries, apart from the ranks' tiles."""
    max_k = min(max(ks), len(candidates))
    columns = torch.tensor([min(k, max_k) - 1 for k in ks], device=queries.device)
    x, y = _augmented(queries, candidates)
    nearest_km = torch.empty(len(queries), len(ks), dtype=torch.float64, device=queries.device)
    rows = min(len(queries), max(1, _CHUNK_ELEMENTS // len(candidates)))
    buffer = x.new_empty(rows, len(candidates))  # reused: a fresh block each time costs page faults (measured)
    for start in range(0, len(queries), rows):
        block = slice(start, min(start + rows, len(queries)))
        dist = torch.mm(x[block], y.T, out=buffer[:block.stop - block.start])
        if candidate_scale is not None:
            dist = dist.clamp_min_(0).sqrt_().div_(candidate_scale[None, :])
        top = dist.topk(max_k, dim=1, largest=False, sorted=True).indices
        here = coords[block]
        km = haversine_km(here[:, :1], here[:, 1:], coords[top, 0], coords[top, 1])
        nearest_km[block] = km.cummin(dim=1).values[:, columns]
    return nearest_km


def _summary(ranks: torch.Tensor, nearest_km: torch.Tensor | None, ks: Sequence[int], strict: bool) -> dict:
    ranks_np = ranks.cpu().numpy()
    out: dict[str, Any] = {}
    for k in ks:
        hits = ranks_np < k if strict else ranks_np <= k
        out[f"recall@{k}"] = float(hits.mean())
    out["median_rank"] = float(np.median(ranks_np))
    out["mean_rank"] = float(ranks_np.mean())
    if nearest_km is not None:
        for k, km in zip(ks, nearest_km.cpu().numpy().T):
            out[f"nearest_km@{k}"] = {"median": float(np.median(km)), "mean": float(km.mean())}
    out["ranks"] = ranks_np
    return out


@torch.no_grad()
def retrieval_metrics(
    image_emb: torch.Tensor | np.ndarray,
    audio_emb: torch.Tensor | np.ndarray,
    coords: torch.Tensor | np.ndarray | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    normalise: bool = False,
    rank_convention: str = "le",
) -> dict[str, Any]:
    """Retrieval metrics of row-aligned pairs (row i of ``image_emb`` and of ``audio_emb`` are one place).

    Returns a dict with the settings (``num_pairs``, ``ks``, ``rank_convention``, ``recall_definition``,
    ``normalise``, ``distance``, ``ties``) and one dict per direction (``image_to_audio``, ``audio_to_image``) with
    ``recall@k`` (fractions), ``median_rank``, ``mean_rank``, ``ranks`` (int array, 1-based) and, when ``coords``
    ([N, 2] latitude, longitude in degrees) is given, ``nearest_km@k`` = median and mean over queries of the
    haversine km to the nearest place among the top k retrievals (ties at the k-th place broken arbitrarily).
    """
    image_emb = _as_embeddings(image_emb, "image embeddings")
    audio_emb = _as_embeddings(audio_emb, "audio embeddings").to(image_emb.device)
    dtype = torch.promote_types(image_emb.dtype, audio_emb.dtype)
    image_emb, audio_emb = image_emb.to(dtype), audio_emb.to(dtype)
    if image_emb.shape != audio_emb.shape:
        raise InputError(
            f"image and audio embeddings differ in shape: {tuple(image_emb.shape)} vs {tuple(audio_emb.shape)}"
        )
    if rank_convention not in RANK_CONVENTIONS:
        raise InputError(f"rank_convention must be one of {list(RANK_CONVENTIONS)}, got {rank_convention!r}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise InputError(f"ks must be positive integers, got {ks}")
    num_pairs = len(image_emb)
    if coords is not None:
        coords = torch.as_tensor(coords, dtype=torch.float64, device=image_emb.device)
        if coords.shape != (num_pairs, 2) or not torch.isfinite(coords).all():
            raise InputError(f"coords must be a finite [N={num_pairs}, 2] (latitude, longitude) array")

    # The reference code divides distance_matrix[audio, image] by its column means, each image's mean distance to
    # the audio. An image query's distances all share its scale, so only audio-to-image ranks change.
    image_scale = _mean_distance_per_image(image_emb, audio_emb).clamp_min(1e-12) if normalise else None
    image_to_audio, audio_to_image = true_partner_ranks(image_emb, audio_emb, image_scale)
    km_image_to_audio = km_audio_to_image = None
    if coords is not None:
        km_image_to_audio = nearest_km_of_top_k(image_emb, audio_emb, coords, ks)
        km_audio_to_image = nearest_km_of_top_k(audio_emb, image_emb, coords, ks, image_scale)
    directions = {"image_to_audio": (image_to_audio, km_image_to_audio),
                  "audio_to_image": (audio_to_image, km_audio_to_image)}
    distance = "L2 distance"
    if normalise:
        distance += " divided by each image's mean distance to all audio clips (the reference code's normalisation)"
    results: dict[str, Any] = {
        "task": "retrieval",
        "num_pairs": num_pairs,
        "embedding_dim": int(image_emb.shape[1]),
        "ks": ks,
        "rank_convention": rank_convention,
        "recall_definition": f"Recall@k counts a hit at {RANK_CONVENTIONS[rank_convention]}",
        "normalise": normalise,
        "distance": distance,
        "ties": TIES,
    }
    for name, (ranks, nearest_km) in directions.items():
        results[name] = _summary(ranks, nearest_km, ks, strict=rank_convention == "lt")
    return results


def load_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """``keys`` and ``embeddings`` of an embedding file (``.npz``, as ``soundingearth-zoo embed`` writes it)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            keys, embeddings = data["keys"], data["embeddings"]
    except FileNotFoundError:
        raise InputError(f"embedding file not found: {path}") from None
    except KeyError as err:
        raise InputError(f"{path} lacks the array {err} (an embedding file holds 'keys' and 'embeddings')") from None
    except (ValueError, OSError, zipfile.BadZipFile) as err:  # not an npz, or object arrays that need pickle
        raise InputError(f"{path} is not a plain embedding .npz file ({str(err).splitlines()[0]})") from None
    keys = [str(k) for k in keys.tolist()]
    if embeddings.ndim != 2 or len(keys) != len(embeddings):
        raise InputError(f"{path}: embeddings of shape {embeddings.shape} do not match {len(keys)} keys")
    if len(set(keys)) != len(keys):
        raise InputError(f"{path} holds duplicate keys")
    return keys, embeddings.astype(np.float32, copy=False)


def pair_embeddings(image: tuple[list[str], np.ndarray], audio: tuple[list[str], np.ndarray],
                    ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Align audio rows to image rows by key; both files must hold the same keys and dimension."""
    (image_keys, image_emb), (audio_keys, audio_emb) = image, audio
    if set(image_keys) != set(audio_keys):
        only_image = sorted(set(image_keys) - set(audio_keys))
        only_audio = sorted(set(audio_keys) - set(image_keys))
        raise InputError(
            f"image and audio embeddings hold different keys: {len(only_image)} only in the image file"
            f"{f' (e.g. {only_image[0]!r})' if only_image else ''}, {len(only_audio)} only in the audio file"
            f"{f' (e.g. {only_audio[0]!r})' if only_audio else ''}"
        )
    if image_emb.shape[1] != audio_emb.shape[1]:
        raise InputError(f"image embeddings are {image_emb.shape[1]}-d but audio embeddings {audio_emb.shape[1]}-d")
    row = {key: i for i, key in enumerate(audio_keys)}
    return image_keys, image_emb, audio_emb[[row[key] for key in image_keys]]


def read_coordinates(metadata: str | os.PathLike, keys: Sequence[str]) -> np.ndarray:
    """``[N, 2]`` latitude, longitude (degrees) of ``keys`` from a CSV with columns ``key, latitude, longitude``."""
    try:
        with open(metadata, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing_columns = {"key", "latitude", "longitude"} - set(reader.fieldnames or ())
            if missing_columns:
                raise InputError(f"{metadata} lacks the column(s) {', '.join(sorted(missing_columns))}")
            places = {row["key"]: (row["latitude"], row["longitude"]) for row in reader}
    except FileNotFoundError:
        raise InputError(f"metadata file not found: {metadata}") from None
    absent = [key for key in keys if key not in places]
    if absent:
        raise InputError(f"{len(absent)} keys have no row in {metadata} (e.g. {absent[0]!r})")
    try:
        coords = np.array([places[key] for key in keys], dtype=np.float64)
    except ValueError as err:
        raise InputError(f"{metadata} holds a latitude or longitude that is not a number ({err})") from None
    if not np.isfinite(coords).all() or (np.abs(coords) > (90, 180)).any():
        raise InputError(f"{metadata} holds latitudes or longitudes out of range")
    return coords


class _SplitInputs(Dataset):
    """Per item of an archive split: the evaluation crop of its image and the windows of its whole clip, or the
    reason it cannot be read."""

    def __init__(self, items: Sequence[Any], frontend: Any):
        from .audio import LogMel
        from .augment import eval_image_transform

        self.items, self.frontend = items, frontend
        self.logmel = LogMel(frontend)
        self.image_transform = eval_image_transform(from_tile=True)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, torch.Tensor | str]:
        from .audio import read_windows
        from .images import load_image

        item = self.items[index]
        try:
            image = self.image_transform(load_image(item.image))
            return index, image, read_windows(item.audio, self.frontend, logmel=self.logmel)
        except InputError as err:
            return index, None, str(err)


@dataclass
class ArchiveEmbeddings:
    """The embedded items of one archive split, rows aligned; ``skipped`` maps unreadable keys to the reason."""

    items: list[Any]
    image_emb: torch.Tensor
    audio_emb: torch.Tensor
    frontend: Any
    skipped: dict[int, str]

    @property
    def keys(self) -> list[str]:
        return [str(item.key) for item in self.items]

    @property
    def coords(self) -> np.ndarray:
        return np.array([(item.latitude, item.longitude) for item in self.items], dtype=np.float64)


@torch.inference_mode()
def embed_archive_split(pair: Any, archive: str | os.PathLike, split: str = "test", batch_size: int = 32,
                        workers: int = 0) -> ArchiveEmbeddings:
    """Embed every readable item of a split with an ``AudioVisualPair``: the evaluation crop of the tile, and the
    whole recording as the mean of its windows (capped as the pair's front end says). Unreadable items are
    skipped, listed, and left out of both modalities."""
    from tqdm import tqdm

    from .archive import read_metadata
    from .pair import encode_clips

    items = read_metadata(archive, split)
    if not items:
        raise InputError(f"the {split} split of {archive} is empty")
    inputs = _SplitInputs(items, pair.frontend_config)
    loader = DataLoader(inputs, batch_size=None, num_workers=workers)
    kept, skipped, image_emb, audio_emb, images, clips = [], {}, [], [], [], []

    def flush() -> None:
        if images:
            image_emb.append(pair.encode_image(torch.stack(images)).cpu())
            audio_emb.append(encode_clips(pair.audio, clips).cpu())
            images.clear()
            clips.clear()

    for index, image, windows in tqdm(loader, desc=f"embedding the {split} split", unit="pair"):
        if image is None:
            skipped[items[index].key] = windows
            continue
        kept.append(items[index])
        images.append(image)
        clips.append(windows)
        if len(images) == batch_size:
            flush()
    flush()
    if len(kept) < 2:
        raise InputError(f"fewer than 2 readable pairs in the {split} split of {archive}")
    return ArchiveEmbeddings(kept, torch.cat(image_emb), torch.cat(audio_emb), pair.frontend_config, skipped)


def gallery_rows(embedded: ArchiveEmbeddings, num_queries: int = 4, top: int = 5) -> list[dict[str, Any]]:
    """For ``num_queries`` evenly spread query images: the tile, its true sound's first window and the first windows
    of the ``top`` nearest sounds, ready for ``reports.plot_gallery``."""
    from .audio import read_window
    from .images import load_image

    num = len(embedded.items)
    queries = np.unique(np.linspace(0, num - 1, min(num_queries, num)).round().astype(int))
    nearest = torch.cdist(embedded.image_emb[queries], embedded.audio_emb).topk(min(top, num), largest=False)

    def spectrogram(item: Any) -> np.ndarray:
        return read_window(item.audio, embedded.frontend, 0)[0].numpy()

    rows = []
    for q, retrieved in zip(queries.tolist(), nearest.indices.tolist()):
        item = embedded.items[q]
        tile = load_image(item.image)
        tile.thumbnail((192, 192))
        rows.append({
            "key": item.key,
            "image": np.asarray(tile) / 255.0,
            "true_spectrogram": spectrogram(item),
            "retrieved": [(embedded.items[r].key, spectrogram(embedded.items[r]), r == q) for r in retrieved],
        })
    return rows


def _load_pair(args: argparse.Namespace) -> Any:
    from .pair import AudioVisualPair

    if Path(args.model).suffix in (".pt", ".pth") or Path(args.model).is_file():
        return AudioVisualPair.from_checkpoint(args.model)
    return AudioVisualPair.from_pretrained(args.model, pretrained=not args.no_pretrained,
                                           image_weights=args.image_weights, audio_weights=args.audio_weights)


def _write_ranks(path: Path, keys: Sequence[str], results: dict[str, Any]) -> None:
    from .reports import write_text

    lines = ["key,image_to_audio_rank,audio_to_image_rank"]
    lines += [f"{key},{i2a},{a2i}" for key, i2a, a2i in
              zip(keys, results["image_to_audio"]["ranks"], results["audio_to_image"]["ranks"])]
    write_text(path, "\n".join(lines) + "\n")


def cli_retrieval(args: argparse.Namespace) -> int:
    from . import reports

    if (args.image_embeddings or args.audio_embeddings) and args.model:
        raise InputError("give either --image-embeddings and --audio-embeddings, or --model and --archive")
    embedded = None
    if args.model:
        if not args.archive:
            raise InputError("--model needs --archive, the archive whose split it embeds")
        pair = _load_pair(args).to(args.device)
        embedded = embed_archive_split(pair, args.archive, args.split, args.batch_size, args.workers)
        keys, image_emb, audio_emb, coords = embedded.keys, embedded.image_emb, embedded.audio_emb, embedded.coords
        source = {"model": args.model, "archive": args.archive, "split": args.split,
                  "skipped": {str(k): reason for k, reason in embedded.skipped.items()}}
    elif args.image_embeddings and args.audio_embeddings:
        keys, image_emb, audio_emb = pair_embeddings(load_embeddings(args.image_embeddings),
                                                     load_embeddings(args.audio_embeddings))
        coords = read_coordinates(args.metadata, keys) if args.metadata else None
        source = {"image_embeddings": args.image_embeddings, "audio_embeddings": args.audio_embeddings,
                  "metadata": args.metadata}
    else:
        raise InputError("give --image-embeddings and --audio-embeddings, or --model and --archive")

    results = retrieval_metrics(image_emb, audio_emb, coords=coords, ks=args.ks or DEFAULT_KS,
                                normalise=args.normalise, rank_convention=args.rank_convention)
    results["source"] = source
    out = Path(args.out)
    reports.write_json(out / "retrieval.json", results)
    markdown = reports.retrieval_markdown(results)
    reports.write_text(out / "retrieval.md", markdown)
    _write_ranks(out / "ranks.csv", keys, results)
    reports.plot_recall_at_k(results, out / "recall_at_k.png")
    print(markdown)
    if embedded is None:
        print("gallery.png not drawn: it needs the images and audio, so run from --model and --archive")
        return 0
    if args.gallery_size > 0:
        reports.plot_gallery(gallery_rows(embedded, args.gallery_size), out / "gallery.png")
    if embedded.skipped:
        key, reason = next(iter(embedded.skipped.items()))
        print(f"skipped {len(embedded.skipped)} unreadable items (listed in retrieval.json), e.g. {key}: {reason}",
              file=sys.stderr)
    return 0
