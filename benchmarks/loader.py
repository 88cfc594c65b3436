"""Training samples per second per CPU core: the raw archive against the prepared format.

Both readers produce the same training sample (a 192 px image with the paper's augmentation, a random 128-frame
log-mel window) from items of the real archive's sizes: 1024 px JPEG tiles and 3-minute 44.1 kHz stereo MP3s.
One audio file is encoded and copied for every item (encoding is slow; decoding is what is measured). Each reader
runs in this one process with one torch thread, and the rate is samples per second of this process's CPU time,
so it is a per-core figure that other load on the machine does not distort (wall-clock rates are printed too).

    python benchmarks/loader.py --items 8 --samples 300

Two ways to train, both measured for both readers:

- the trainer's (``defer_augment=True``): the loader decodes and draws the augmentation, the training device
  applies it to the batch (``TrainAugment.apply``). On a GPU that is a few kernels per batch; these rows are what
  a data-loader core must do per sample to feed it. The cost of ``apply`` on this CPU is printed below them.
- the augmentation in the loader (the datasets' default, and what a CPU-only run without a separate device costs).

Also printed: the one-off cost of ``prepare`` per item, and the parts of a prepared sample's image: the decode of
the stored JPEG and the augmentation on this CPU (per image, alone and in a batch).
"""
from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from soundingearth_zoo.archive import ArchiveDataset, split_of
from soundingearth_zoo.augment import train_augment
from soundingearth_zoo.demo_data import SCENES, render_image, synthesize_audio
from soundingearth_zoo.prepare import PreparedDataset, PreparedStream, _decode_jpeg, prepare_archive


def make_archive(root: Path, items: int, tile: int, seconds: float, sample_rate: int) -> Path:
    """``items`` train items with ``tile`` px JPEGs and one shared ``seconds`` long stereo MP3."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    mono = synthesize_audio(SCENES[0], seconds, sample_rate, 0.5, 0.5, rng)
    stereo = np.stack([mono, 0.8 * mono], 1)
    audio = root / "recording.mp3"
    sf.write(audio, stereo, sample_rate, format="MP3")
    keys = [k for k in range(1000, 1000 + 10 * items) if split_of(k) == "train"][:items]
    rows = []
    for i, key in enumerate(keys):
        scene = SCENES[i % len(SCENES)]
        render_image(scene, tile, *rng.uniform(0, 1, 2), rng).save(root / "images" / f"{key}.jpg", quality=90)
        target = root / "raw_audio" / f"item_{key}" / "recording.mp3"
        target.parent.mkdir(parents=True)
        shutil.copyfile(audio, target)
        rows.append({"key": key, "long_key": f"item_{key}", "mp3name": "recording.mp3", "mp3samplerate": sample_rate,
                         "latitude": 0.0, "longitude": 0.0, "description": "", "title": ""})
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def rate(samples, count: int, per_draw: int = 1) -> tuple[float, float]:
    """(samples per CPU second, samples per wall second) of drawing ``count`` times from an iterator that gives
    ``per_draw`` samples a draw."""
    next(samples)  # warm-up: open files, build filter banks
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        next(samples)
    return count * per_draw / (time.process_time() - cpu), count * per_draw / (time.perf_counter() - wall)


def forever(call):
    """An endless iterator of ``call()``."""
    return iter(call, object())


def cycle_map(dataset):
    while True:
        for i in torch.randperm(len(dataset)).tolist():
            yield dataset[i]


def cycle_stream(stream):
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        yield from stream
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=8, help="distinct items (reused over the samples)")
    parser.add_argument("--samples", type=int, default=300, help="samples timed per reader")
    parser.add_argument("--tile", type=int, default=1024, help="tile side, px")
    parser.add_argument("--seconds", type=float, default=180.0, help="recording length")
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--batch", type=int, default=16, help="batch of the augmentation's apply() on this CPU")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated files here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        started = time.perf_counter()
        archive = make_archive(work / "archive", args.items, args.tile, args.seconds, args.sample_rate)
        jpeg_kb = np.mean([p.stat().st_size for p in (archive / "images").iterdir()]) / 1024
        mp3_mb = (archive / "recording.mp3").stat().st_size / 2**20
        print(f"{args.items} items: {args.tile} px JPEG ({jpeg_kb:.0f} KB), {args.seconds:.0f} s "
              f"{args.sample_rate} Hz stereo MP3 ({mp3_mb:.1f} MB); generated in {time.perf_counter() - started:.0f} s")

        cpu = time.process_time()
        report = prepare_archive(archive, work / "prepared", workers=1, shard_size=max(args.items // 2, 1))
        prepare_ms = (time.process_time() - cpu) / report["written"] * 1000
        prepared = work / "prepared"
        stored_kb = sum(p.stat().st_size for p in (prepared / "shards").glob("*.tar")) / report["written"] / 1024

        readers = {
            "raw archive (ArchiveDataset)": lambda **kw: cycle_map(ArchiveDataset(archive, "train", **kw)),
            "prepared, map-style (PreparedDataset)": lambda **kw: cycle_map(PreparedDataset(prepared, "train", **kw)),
            "prepared, streaming (PreparedStream)": lambda **kw: cycle_stream(
                PreparedStream(prepared, "train", world_size=1, **kw)),
        }
        tar, item = PreparedDataset(prepared, "train").items[0]
        with open(prepared / "shards" / tar, "rb") as f:
            f.seek(item["jpg"][0])
            jpg = f.read(item["jpg"][1])
        crop = _decode_jpeg(jpg)  # the stored central 512 px, as training decodes it
        augment = train_augment()
        batch = crop.expand(args.batch, -1, -1, -1).contiguous()
        params = torch.stack([augment.draw(crop) for _ in range(args.batch)])
        tables = {
            "training samples, the trainer's way: loader decodes and draws, the device augments": {
                name: rate(reader(defer_augment=True), args.samples) for name, reader in readers.items()
            },
            "training samples, augmented in the loader": {
                name: rate(reader(), args.samples) for name, reader in readers.items()
            },
            "evaluation samples (no augmentation)": {
                "raw archive (ArchiveDataset)": rate(cycle_map(ArchiveDataset(archive, "train", train=False)),
                                                     args.samples),
                "prepared (PreparedDataset)": rate(cycle_map(PreparedDataset(prepared, "train", train=False)),
                                                   args.samples),
            },
            "the parts of a prepared sample's image, on this CPU": {
                "decode of the stored 512 px JPEG": rate(forever(lambda: _decode_jpeg(jpg)), args.samples),
                "augmentation, one image (TrainAugment as a v2 transform)": rate(forever(lambda: augment(crop)),
                                                                                 args.samples),
                f"augmentation, batch of {args.batch} (TrainAugment.apply)": rate(
                    forever(lambda: augment.apply(batch, params)), max(args.samples // args.batch, 2), args.batch),
            },
        }

    print(f"prepare: {prepare_ms:.0f} ms CPU per item (once), {stored_kb:.0f} KB stored per item")
    for title, results in tables.items():
        baseline = next(iter(results.values()))[0]
        print(f"\n{title}")
        print(f"  {'':56s} {'samples/s/core':>15s} {'ms/sample':>10s} {'samples/s wall':>15s} {'vs first':>9s}")
        for name, (per_core, wall) in results.items():
            print(f"  {name:56s} {per_core:15.1f} {1000 / per_core:10.2f} {wall:15.1f} {per_core / baseline:8.1f}x")
    print(f"torch {torch.__version__}, 1 thread, {args.samples} samples per reader")


if __name__ == "__main__":
    main()
