"""The SoundingEarth archive as published, read in place: metadata, reference splits, images and raw audio.

Layout of an archive folder::

    metadata.csv                      key, long_key, mp3name, mp3samplerate, latitude, longitude, title, ...
    images/<key>.jpg                  one 1024 px Google Earth tile per key
    raw_audio/<long_key>/<mp3name>    the recordings, as the data set's download script fetches them from the
                                      Internet Archive (``ia download <long_key>`` inside ``raw_audio/``)

Splits are the reference code's, by ``key % 10``: 7 is validation, 2 and 5 are test, the rest train.
``ArchiveDataset`` trains straight from this layout (decoding a 1024 px JPEG and seeking into an MP3 per sample);
``prepare`` converts it into shards that are several times cheaper to read.
"""
from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .audio import FrontendConfig, LogMel, read_random_window, read_window
from .augment import TILE_FRACTION, CentralCrop, eval_image_transform, train_augment, train_image_transform
from .errors import InputError
from .images import load_image

__all__ = [
    "AUDIO_DIR",
    "IMAGE_DIR",
    "METADATA_COLUMNS",
    "METADATA_FILE",
    "SPLITS",
    "ArchiveDataset",
    "ArchiveItem",
    "read_metadata",
    "split_of",
]

_logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.csv"
IMAGE_DIR = "images"
AUDIO_DIR = "raw_audio"
#: The columns of ``metadata.csv`` this package reads or writes (others are kept out of the way, not an error).
METADATA_COLUMNS = ("key", "long_key", "mp3name", "mp3samplerate", "latitude", "longitude", "description", "title")
_REQUIRED_COLUMNS = ("key", "long_key", "mp3name", "latitude", "longitude")
SPLITS = ("train", "val", "test")


def split_of(key: int) -> str:
    """The reference split of an item: ``key % 10`` is 7 for validation, 2 or 5 for test, else train."""
    digit = int(key) % 10
    return "val" if digit == 7 else "test" if digit in (2, 5) else "train"


@dataclass(frozen=True)
class ArchiveItem:
    """One row of ``metadata.csv`` with the paths of its files."""

    key: int
    latitude: float
    longitude: float
    image: Path
    audio: Path
    title: str = ""
    description: str = ""

    @property
    def split(self) -> str:
        return split_of(self.key)


def _check_archive(archive: str | os.PathLike) -> Path:
    root = Path(archive)
    if not (root / METADATA_FILE).is_file():
        raise InputError(f"{root} is not a SoundingEarth archive: {root / METADATA_FILE} not found")
    return root


def read_metadata(archive: str | os.PathLike, split: str | None = None) -> list[ArchiveItem]:
    """The items of ``metadata.csv`` (of one split if given), sorted by key. Whether their files exist and
    decode is not checked here: readers skip and report the ones that do not."""
    if split is not None and split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    root = _check_archive(archive)
    with open(root / METADATA_FILE, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise InputError(f"{root / METADATA_FILE} lacks the columns {', '.join(missing)}")
        items, bad_rows = {}, 0
        for row in reader:
            try:
                key = int(row["key"])
                item = ArchiveItem(
                    key=key,
                    latitude=float(row["latitude"]),
                    longitude=float(row["longitude"]),
                    image=root / IMAGE_DIR / f"{key}.jpg",
                    audio=root / AUDIO_DIR / row["long_key"] / row["mp3name"],
                    title=row.get("title") or "",
                    description=row.get("description") or "",
                )
            except (TypeError, ValueError):  # an empty or non-numeric field
                bad_rows += 1
                continue
            if split is None or item.split == split:
                items[key] = item
    if bad_rows:
        _logger.warning("%s: skipped %d rows without a numeric key or coordinates", root / METADATA_FILE, bad_rows)
    return [items[key] for key in sorted(items)]


class ArchiveDataset(Dataset):
    """Training samples straight from the raw archive: ``dict(image=[3, 192, 192], audio=[1, n_mels, 128],
    key=int)``.

    ``train=True``: the augmented central half of the tile (``augment.train_image_transform``) and a random
    window read by seeking (``audio.read_random_window``); ``train=False``: the evaluation crop and the first
    window. Items whose files are missing are dropped when the dataset is built, items that fail to decode are
    replaced by the next readable one; both are logged and listed in ``skipped`` (key -> reason; in this process:
    a DataLoader worker keeps its own).

    ``defer_augment=True`` (training only): a sample holds the tile's central half as uint8 and its drawn
    augmentation, as ``PreparedDataset``'s do (``self.augment.apply`` augments the batch).
    """

    def __init__(
        self,
        archive: str | os.PathLike,
        split: str = "train",
        frontend: FrontendConfig | None = None,
        image_transform: Callable[[Any], torch.Tensor] | None = None,
        train: bool = True,
        defer_augment: bool = False,
    ):
        self.frontend = frontend or FrontendConfig()
        self.logmel = LogMel(self.frontend)
        self.train = train
        self.augment = train_augment() if defer_augment and train else None
        if self.augment is not None:
            if image_transform is not None:
                raise ValueError("defer_augment draws the paper's augmentation: it takes no image_transform")
            image_transform = v2.Compose([v2.PILToTensor(), CentralCrop(TILE_FRACTION)])
        elif image_transform is None:
            image_transform = (train_image_transform if train else eval_image_transform)(from_tile=True)
        self.image_transform = image_transform
        self.skipped: dict[int, str] = {}
        self.items = []
        for item in read_metadata(archive, split):
            missing = [kind for kind, path in (("image", item.image), ("audio", item.audio)) if not path.is_file()]
            if missing:
                self._skip(item.key, f"missing {' and '.join(missing)} file")
            else:
                self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def _skip(self, key: int, reason: str) -> None:
        if key not in self.skipped:
            _logger.warning("skipping item %d: %s", key, reason)
            self.skipped[key] = reason

    def load(self, item: ArchiveItem) -> dict[str, Any]:
        """One sample of ``item``; raises ``InputError`` if its files do not decode."""
        image = self.image_transform(load_image(item.image))
        extra = {"augment": self.augment.draw(image)} if self.augment is not None else {}
        if self.train:
            spectrogram = read_random_window(item.audio, self.frontend, logmel=self.logmel)
        else:
            spectrogram = read_window(item.audio, self.frontend, 0, logmel=self.logmel)
        return {"image": image, **extra, "audio": spectrogram, "key": item.key}

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self.items)):
            item = self.items[(index + attempt) % len(self.items)]
            if item.key in self.skipped:
                continue
            try:
                return self.load(item)
            except InputError as err:
                self._skip(item.key, str(err))
        raise InputError("no item of the archive could be read; see the warnings above")
