"""The fast training format: ``soundingearth-zoo prepare ARCHIVE OUT`` and the datasets that read it.

Reading the raw archive costs a 1024 px JPEG decode and an MP3 seek, decode, resample and STFT per sample; the
prepared format keeps only what training uses. Per item: the central half of the tile re-encoded as JPEG of at
most ``crop_size`` px (512: the real tiles' central half at full resolution), the normalised log-mel spectrogram as
float16, the key and the coordinates. Recordings longer than ``max_frames`` frames (default 2048, 47.5 s at the
default front end; the archive has recordings of hours) keep ``max_frames`` frames in chunks of two windows
spread evenly over the whole recording, so training still hears all of it.

Layout of ``OUT``::

    index.json                    format, settings (front end, sizes), the shards and their item counts
    report.json                   items written and skipped (with the reason), shards written and reused
    shards/<split>-NNNNN.tar      webdataset-style tar, per item <key>.jpg, <key>.npy ([chunks, n_mels, frames]
                                  float16) and <key>.json; readable with the standard library's tarfile
    shards/<split>-NNNNN.json     the shard's record: its items with their byte offsets in the tar, and its
                                  skipped items. Written after the tar: its presence marks the shard finished.

Items are assigned to shards by split and key, so the plan is the same on every run: shards are converted in
parallel (``workers`` processes), each written atomically, and a second run reuses every finished shard.

Two readers: ``PreparedDataset`` is map-style (random access by the recorded offsets; the trainer's sampler
splits the items over ranks and resumes exactly), ``PreparedStream`` reads shards in sequence, each front to back
in one open file, split over ranks and loader workers, and shuffles in a buffer (for object storage, where a
request per item is slow: a buffered remote file serves forward reads from the block it has fetched).
Both take the folder as a local path or an fsspec URL (``s3://bucket/prepared`` with s3fs installed, ...);
``prepare`` writes to local disk, one run per folder at a time.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
import multiprocessing
import os
import posixpath
import tarfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from torchvision.io import decode_jpeg

from .archive import SPLITS, ArchiveItem, read_metadata
from .atomic import atomic_path
from .audio import FrontendConfig, LogMel, audio_info, frame_windows, load_audio, random_window, read_windows_at
from .augment import IMAGE_SIZE, TILE_FRACTION, TrainAugment, eval_image_transform, train_augment
from .errors import InputError
from .images import load_image

__all__ = ["PREPARED_FORMAT", "PreparedDataset", "PreparedStream", "cli_prepare", "prepare_archive"]

_logger = logging.getLogger(__name__)

PREPARED_FORMAT = "soundingearth-zoo/prepared/1"
INDEX_FILE = "index.json"
REPORT_FILE = "report.json"
SHARD_DIR = "shards"
#: Windows per chunk when a long recording is cut to ``max_frames``: a random window still has room to move.
CHUNK_WINDOWS = 2


# ------------------------------------------------------------------------------------------------ conversion
@dataclasses.dataclass(frozen=True)
class _Settings:
    frontend: dict[str, Any]
    crop_size: int
    max_frames: int
    shard_size: int


def _write_json(path: Path, value: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1) + "\n")


def _encode_image(path: Path, crop_size: int) -> bytes:
    """The tile's central half as JPEG, downscaled to ``crop_size`` px if larger."""
    tile = load_image(path)
    width, height = tile.size
    crop_w, crop_h = round(width * TILE_FRACTION), round(height * TILE_FRACTION)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    crop = tile.crop((left, top, left + crop_w, top + crop_h))
    if max(crop.size) > crop_size:
        crop = crop.resize((crop_size, crop_size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@functools.lru_cache(maxsize=2)
def _logmel(frontend_json: str) -> LogMel:
    return LogMel(FrontendConfig.from_json(frontend_json))


def _spectrogram(path: Path, cfg: FrontendConfig, max_frames: int) -> np.ndarray:
    """``[chunks, n_mels, frames]`` float16: the whole clip as one chunk, or for a clip of more than
    ``max_frames`` frames, ``max_frames // chunk`` chunks of ``CHUNK_WINDOWS`` windows spread evenly over it."""
    logmel = _logmel(cfg.to_json())
    info = audio_info(path)
    num_frames = cfg.num_frames(round(info.duration * cfg.sample_rate))
    chunk = CHUNK_WINDOWS * cfg.window_frames
    if num_frames <= max(max_frames, chunk):
        spec = logmel(load_audio(path, cfg.sample_rate))[None]
    else:
        chunk_cfg = dataclasses.replace(cfg, window_frames=chunk)  # a "window" here is one chunk of frames
        starts = np.linspace(0, num_frames - chunk, max(max_frames // chunk, 1)).round().astype(int)
        spec = read_windows_at(path, chunk_cfg, starts.tolist(), logmel).squeeze(1)
    return np.ascontiguousarray(spec.numpy(), dtype=np.float16)  # C order: a chunk is one byte range


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> list[int]:
    """Append a file to the tar; return ``[offset, size]`` of its bytes in the tar."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))
    padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return [tar.offset - padded, len(data)]


def _write_shard(task: tuple[Path, str, str, list[ArchiveItem], _Settings]) -> tuple[dict, bool]:
    """Convert one shard's items (unless a finished shard with the same plan is there); return its record and
    whether it was written."""
    shard_dir, name, split, items, settings = task
    record_path, tar_path = shard_dir / f"{name}.json", shard_dir / f"{name}.tar"
    planned = [item.key for item in items]
    if record_path.is_file() and tar_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("planned") == planned:
            return record, False
    cfg = FrontendConfig.from_dict(settings.frontend)
    record = {"name": name, "split": split, "tar": tar_path.name, "planned": planned, "items": [], "skipped": []}
    with atomic_path(tar_path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for item in items:
            try:
                image = _encode_image(item.image, settings.crop_size)
                spectrogram = _spectrogram(item.audio, cfg, settings.max_frames)
                buffer = io.BytesIO()
                np.save(buffer, spectrogram)
            except Exception as err:  # noqa: BLE001 - one unreadable item must not stop a conversion of days
                reason = str(err) if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
                record["skipped"].append({"key": item.key, "reason": reason.splitlines()[0]})
                continue
            meta = {"key": item.key, "latitude": item.latitude, "longitude": item.longitude}
            jpg = _add_member(tar, f"{item.key}.jpg", image)
            npy = _add_member(tar, f"{item.key}.npy", buffer.getvalue())
            _add_member(tar, f"{item.key}.json", json.dumps(meta).encode())
            record["items"].append(dict(meta, jpg=jpg, npy=npy, shape=list(spectrogram.shape)))
    _write_json(record_path, record)
    return record, True


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; also keeps OpenMP out of forked children


def prepare_archive(
    archive: str | os.PathLike,
    out: str | os.PathLike,
    frontend: FrontendConfig | None = None,
    workers: int | None = None,
    shard_size: int = 256,
    crop_size: int = 512,
    max_frames: int = 2048,
    progress: bool = False,
) -> dict[str, Any]:
    """Convert ``archive`` into shards under ``out`` (see the module docstring) and return the report, which is
    also written to ``out/report.json``. ``workers`` processes (default: one per core; 0 or 1: this process)
    convert shards in parallel; finished shards of an earlier run with the same settings are kept."""
    cfg = frontend or FrontendConfig()
    if shard_size < 1 or crop_size < 1 or max_frames < cfg.window_frames:
        raise InputError("shard_size and crop_size must be positive and max_frames at least one window")
    started = time.perf_counter()
    items = read_metadata(archive)
    if not items:
        raise InputError(f"{archive} lists no items")
    out = Path(out)
    shard_dir = out / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    for stale in shard_dir.glob(".*.tmp"):  # left by a run that was killed mid-shard
        stale.unlink()
    settings = _Settings(cfg.to_dict(), crop_size, max_frames, shard_size)
    index_path = out / INDEX_FILE
    if index_path.is_file():
        previous = json.loads(index_path.read_text()).get("settings")
        if previous != dataclasses.asdict(settings):
            raise InputError(f"{out} was prepared with other settings ({previous}); use a new folder")
    index = {"format": PREPARED_FORMAT, "archive": str(archive), "settings": dataclasses.asdict(settings), "shards": []}
    if not index_path.is_file():
        _write_json(index_path, index)  # the settings first, so that a resumed run can check them

    tasks = []
    for split in SPLITS:
        members = [item for item in items if item.split == split]
        for number, start in enumerate(range(0, len(members), shard_size)):
            tasks.append((shard_dir, f"{split}-{number:05d}", split, members[start : start + shard_size], settings))
    workers = getattr(os, "process_cpu_count", os.cpu_count)() if workers is None else workers
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(tasks) > 1:
            pool = stack.enter_context(multiprocessing.Pool(min(workers, len(tasks)), initializer=_init_worker))
            results = pool.imap_unordered(_write_shard, tasks)
        else:
            results = map(_write_shard, tasks)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(tasks), desc="prepare", unit="shard")
        done = {record["name"]: (record, written) for record, written in results}

    records = [done[task[1]][0] for task in tasks]
    index["shards"] = [{"name": r["name"], "split": r["split"], "items": len(r["items"])} for r in records]
    _write_json(index_path, index)
    skipped = [{"key": s["key"], "split": r["split"], "reason": s["reason"]} for r in records for s in r["skipped"]]
    report = {
        "archive": str(archive),
        "out": str(out),
        "items": len(items),
        "written": sum(len(r["items"]) for r in records),
        "written_per_split": {s: sum(len(r["items"]) for r in records if r["split"] == s) for s in SPLITS},
        "skipped": skipped,
        "shards": len(records),
        "shards_written": sum(written for _, written in done.values()),
        "shards_reused": sum(not written for _, written in done.values()),
        "seconds": round(time.perf_counter() - started, 2),
    }
    _write_json(out / REPORT_FILE, report)
    for record, written in done.values():
        for entry in record["skipped"] if written else ():  # reused shards' were reported when they were written
            _logger.warning("skipped item %d: %s", entry["key"], entry["reason"])
    if not report["written"]:
        raise InputError(f"no item of {archive} could be read; see {out / REPORT_FILE}")
    return report


def cli_prepare(args) -> int:
    report = prepare_archive(
        args.archive,
        args.out,
        workers=args.workers,
        shard_size=args.shard_size,
        crop_size=args.crop_size,
        max_frames=args.max_frames,
        progress=True,
    )
    print(
        f"prepared {report['written']} of {report['items']} items in {report['shards']} shards "
        f"({report['shards_written']} written, {report['shards_reused']} reused) in {report['seconds']} s; "
        f"{len(report['skipped'])} skipped, listed in {Path(args.out) / REPORT_FILE}"
    )
    return 0


# ---------------------------------------------------------------------------------------------------- reading
def _join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts) if "://" in root else os.path.join(root, *parts)


def _open(path: str) -> IO[bytes]:
    """A local path, or an fsspec URL (``s3://``, ``gs://``, ``https://`` ..., with the matching fsspec backend)."""
    if "://" in path:
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def _read_json(path: str) -> Any:
    try:
        with _open(path) as f:
            return json.load(f)
    except FileNotFoundError as err:
        raise InputError(f"{path} not found: is this a folder written by `soundingearth-zoo prepare`?") from err


def _read_records(root: str, split: str) -> tuple[FrontendConfig, list[dict]]:
    """The front end and the shard records of one split."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    index = _read_json(_join(root, INDEX_FILE))
    if index.get("format") != PREPARED_FORMAT:
        raise InputError(f"{root} is not in the prepared format {PREPARED_FORMAT}")
    names = [shard["name"] for shard in index["shards"] if shard["split"] == split]
    records = [_read_json(_join(root, SHARD_DIR, f"{name}.json")) for name in names]
    return FrontendConfig.from_dict(index["settings"]["frontend"]), records


def _decode_jpeg(data: bytes) -> torch.Tensor:
    """``[3, H, W]`` uint8. torchvision's libjpeg-turbo decoder, straight to a tensor, takes about 30 % less time
    than PIL, and decoding is the largest cost of a sample after the augmentation. torchvision 0.29 deprecates
    it in favour of TorchCodec, which needs FFmpeg: until that is as easy to install, the warning is silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))


def _read_item(f: IO[bytes], item: dict[str, Any], chunk: int) -> tuple[bytes, np.ndarray]:
    """The stored JPEG and spectrogram chunk ``chunk`` (``[n_mels, frames]`` float16) of an item of the open shard
    ``f``, read by the offsets its record gives, front to back: only these bytes are read."""
    chunks, n_mels, frames = item["shape"]
    chunk_bytes = n_mels * frames * np.dtype(np.float16).itemsize
    (jpg_offset, jpg_size), (npy_offset, npy_size) = item["jpg"], item["npy"]
    f.seek(jpg_offset)
    jpg = f.read(jpg_size)
    f.seek(npy_offset + npy_size - (chunks - chunk) * chunk_bytes)  # the .npy file ends with the array's bytes
    return jpg, np.frombuffer(bytearray(f.read(chunk_bytes)), np.float16).reshape(n_mels, frames)


class _Samples:
    """Stored bytes to a training or evaluation sample, the same for both readers."""

    def __init__(self, frontend: FrontendConfig, train: bool, augment: str, image_size: int, defer_augment: bool):
        self.frontend = frontend
        self.train = train
        self.defer_augment = defer_augment and train
        self.augment: TrainAugment | None = train_augment(augment, image_size) if train else None
        self.image_transform: Callable = self.augment or eval_image_transform(image_size)

    def chunk(self, chunks: int, generator: torch.Generator | None) -> int:
        """The chunk of a stored spectrogram to take the window from: random (training) or the first."""
        return int(torch.randint(chunks, (), generator=generator)) if self.train else 0

    def window(self, chunk: np.ndarray, generator: torch.Generator | None) -> torch.Tensor:
        """``[1, n_mels, window_frames]`` of a chunk ``[n_mels, frames]``: random (training) or the first."""
        chunk = torch.from_numpy(chunk)
        if self.train:
            return random_window(chunk, self.frontend, generator)
        return frame_windows(chunk, self.frontend, max_windows=1)[0]

    def __call__(self, jpg: bytes, window: torch.Tensor, key: int) -> dict[str, Any]:
        image = _decode_jpeg(jpg)
        if self.defer_augment:
            return {"image": image, "augment": self.augment.draw(image), "audio": window.float(), "key": key}
        return {"image": self.image_transform(image), "audio": window.float(), "key": key}


class PreparedDataset(Dataset):
    """Map-style reader of one split of a prepared folder: ``dict(image=[3, S, S] float, audio=[1, n_mels, 128]
    float, key=int)``, S = ``image_size``.

    ``train=True``: augmented image (``augment``: "code" or "paper") and a random window; ``train=False``: the
    evaluation crop and the first window. Randomness comes from torch's global RNG, like torchvision's, so a
    trainer that seeds it per item gets the same sample in any process. Items are read by their byte offsets,
    one open file per shard and process.

    ``defer_augment=True`` (training only): the loader only decodes and draws; a sample holds the stored uint8
    image and its drawn augmentation (``augment``: ``[P]`` float), which ``self.augment.apply`` turns into the
    augmented batch on the training device. The trainer reads the data this way.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        train: bool = True,
        augment: str = "code",
        image_size: int = IMAGE_SIZE,
        defer_augment: bool = False,
    ):
        self.root = os.fspath(root)
        self.frontend, records = _read_records(self.root, split)
        self.samples = _Samples(self.frontend, train, augment, image_size, defer_augment)
        self.augment = self.samples.augment
        self.items = [(record["tar"], item) for record in records for item in record["items"]]
        self.keys = [item["key"] for _, item in self.items]
        self._files: dict[str, IO[bytes]] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.items)

    def _file(self, tar: str) -> IO[bytes]:
        if self._pid != os.getpid():  # a forked loader worker: never share the parent's file positions
            self._files, self._pid = {}, os.getpid()
        if tar not in self._files:
            self._files[tar] = _open(_join(self.root, SHARD_DIR, tar))
        return self._files[tar]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}

    def __getitem__(self, index: int) -> dict[str, Any]:
        tar, item = self.items[index]
        jpg, chunk = _read_item(self._file(tar), item, self.samples.chunk(item["shape"][0], None))
        return self.samples(jpg, self.samples.window(chunk, None), item["key"])


class PreparedStream(IterableDataset):
    """Streaming reader of one split: shards read in sequence, each front to back in one open file (the JPEG and
    the one spectrogram chunk drawn of each item, by the record's offsets), for object storage where a request
    per item is slow.

    Each epoch the shards are put in an order that depends on ``(seed, epoch)`` only (training) or kept in key
    order (evaluation), and the items in that order are cut into one contiguous, disjoint range per rank (equal
    lengths when training, the remainder dropped; all items when evaluating), then per loader worker. A worker
    reads only the shards its range touches. Training shuffles within a buffer of ``shuffle_buffer`` items;
    the buffer and the audio windows draw from a generator seeded by ``(seed, epoch, rank, worker)``, the
    image augmentations from torch's global RNG (which DataLoader seeds per worker). Call ``set_epoch`` before
    each epoch. ``rank`` and ``world_size`` default to torch.distributed's. ``defer_augment`` as in
    ``PreparedDataset``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        train: bool = True,
        seed: int = 0,
        augment: str = "code",
        image_size: int = IMAGE_SIZE,
        shuffle_buffer: int = 512,
        rank: int | None = None,
        world_size: int | None = None,
        defer_augment: bool = False,
    ):
        from . import distributed

        self.root = os.fspath(root)
        self.frontend, records = _read_records(self.root, split)
        self.samples = _Samples(self.frontend, train, augment, image_size, defer_augment)
        self.augment = self.samples.augment
        self.shards = [(record["tar"], record["items"]) for record in records]
        self.train, self.seed, self.shuffle_buffer = train, seed, shuffle_buffer
        self.rank = distributed.rank() if rank is None else rank
        self.world_size = distributed.world_size() if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise InputError(f"rank {self.rank} is not in [0, {self.world_size})")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank_range(self) -> tuple[int, int]:
        total = sum(len(items) for _, items in self.shards)
        return _share(self.rank, self.world_size, total, equal=self.train)

    def __len__(self) -> int:
        start, stop = self._rank_range()
        return stop - start

    def _generator(self, *parts: int) -> torch.Generator:
        seed = int(np.random.SeedSequence([self.seed, self.epoch, *parts]).generate_state(1, np.uint64)[0] >> 1)
        return torch.Generator().manual_seed(seed)

    def _ordered_shards(self) -> list[tuple[str, list[dict[str, Any]]]]:
        if not self.train:
            return self.shards
        order = torch.randperm(len(self.shards), generator=self._generator())
        return [self.shards[i] for i in order]

    def _read_range(self, start: int, stop: int, generator: torch.Generator) -> Iterator[tuple[bytes, Any, int]]:
        """(jpg bytes, audio window, key) of the items ``[start, stop)`` of this epoch's order: each shard opened
        once and read front to back, by the offsets of its record."""
        offset = 0
        for tar_name, items in self._ordered_shards():
            first, last = max(start - offset, 0), min(stop - offset, len(items))
            offset += len(items)
            if first >= last:
                continue
            with _open(_join(self.root, SHARD_DIR, tar_name)) as f:
                for item in items[first:last]:
                    jpg, chunk = _read_item(f, item, self.samples.chunk(item["shape"][0], generator))
                    yield jpg, self.samples.window(chunk, generator).clone(), item["key"]  # not a view of the chunk

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rank_start, rank_stop = self._rank_range()
        start, stop = _share(worker, workers, rank_stop - rank_start, equal=False)
        generator = self._generator(self.rank, worker)
        records = self._read_range(rank_start + start, rank_start + stop, generator)
        if self.train:
            records = _shuffled(records, self.shuffle_buffer, generator)
        for jpg, window, key in records:
            yield self.samples(jpg, window, key)


def _share(part: int, parts: int, total: int, equal: bool) -> tuple[int, int]:
    """The ``part``-th of ``parts`` contiguous ranges of ``range(total)``: equal sizes (the remainder dropped), or
    sizes that differ by at most one and cover everything."""
    if equal:
        size = total // parts
        return part * size, (part + 1) * size
    return part * total // parts, (part + 1) * total // parts


def _shuffled(records: Iterator[Any], size: int, generator: torch.Generator) -> Iterator[Any]:
    """Shuffle a stream within a buffer of ``size``: each incoming record replaces a random buffered one, which
    is yielded."""
    buffer: list[Any] = []
    for record in records:
        if len(buffer) < size:
            buffer.append(record)
            continue
        i = int(torch.randint(size, (), generator=generator))
        yield buffer[i]
        buffer[i] = record
    order = torch.randperm(len(buffer), generator=generator).tolist()
    yield from (buffer[i] for i in order)
