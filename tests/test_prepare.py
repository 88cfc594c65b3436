"""``prepare``: parallel, resumable conversion to tar shards, corrupt items reported; the two readers."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch.utils.data import DataLoader

from soundingearth_zoo.archive import read_metadata
from soundingearth_zoo.audio import FrontendConfig, LogMel, load_audio
from soundingearth_zoo.cli import main
from soundingearth_zoo.demo_data import make_demo_archive
from soundingearth_zoo.errors import InputError
from soundingearth_zoo.prepare import PreparedDataset, PreparedStream, _spectrogram, prepare_archive

SHARD_SIZE = 4


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_demo_archive(tmp_path_factory.mktemp("archive"), num_items=20, image_size=64, corrupt=True)


@pytest.fixture(scope="module")
def prepared(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    report = prepare_archive(archive, out, workers=2, shard_size=SHARD_SIZE, crop_size=24)
    return out, report


def _readable_keys(archive, split):
    return {i.key for i in read_metadata(archive, split) if not i.description.startswith("corrupt:")}


def test_report_lists_the_corrupt_items(archive, prepared):
    out, report = prepared
    corrupt = {i.key for i in read_metadata(archive) if i.description.startswith("corrupt:")}
    assert {entry["key"] for entry in report["skipped"]} == corrupt
    reasons = " ".join(entry["reason"] for entry in report["skipped"])
    assert "cannot read audio" in reasons and "cannot read image" in reasons
    assert report["items"] == 23 and report["written"] == 20
    assert report["written_per_split"] == {"train": 14, "val": 2, "test": 4}
    assert json.loads((out / "report.json").read_text()) == report
    index = json.loads((out / "index.json").read_text())
    assert sum(shard["items"] for shard in index["shards"]) == 20
    assert report["shards"] == report["shards_written"] == len(index["shards"]) == 7  # 17 train (4 + 4 + 4 + 4 + 1)


def test_shards_are_plain_tars_with_exact_offsets(prepared):
    out, _ = prepared
    record = json.loads((out / "shards" / "test-00000.json").read_text())
    with tarfile.open(out / "shards" / "test-00000.tar") as tar:
        names = tar.getnames()
        assert names[:3] == [f"{record['items'][0]['key']}.{ext}" for ext in ("jpg", "npy", "json")]
        assert len(names) == 3 * len(record["items"])
        raw = (out / "shards" / "test-00000.tar").read_bytes()
        for item in record["items"]:
            for ext in ("jpg", "npy"):
                offset, size = item[ext]
                assert raw[offset : offset + size] == tar.extractfile(f"{item['key']}.{ext}").read()
        first = record["items"][0]
        spec = np.load(io.BytesIO(tar.extractfile(f"{first['key']}.npy").read()))
        image = Image.open(io.BytesIO(tar.extractfile(f"{first['key']}.jpg").read()))
        meta = json.loads(tar.extractfile(f"{first['key']}.json").read())
    assert spec.dtype == np.float16 and spec.shape[:2] == (1, 128) and spec.shape[2] > 128
    assert image.format == "JPEG" and image.size == (24, 24)  # the 32 px central half, capped at crop_size
    assert meta["key"] == first["key"] and "latitude" in meta


def test_a_second_run_reuses_finished_shards(archive, prepared, capsys):
    out, _ = prepared
    tars = sorted((out / "shards").glob("*.tar"))
    mtimes = {tar: tar.stat().st_mtime_ns for tar in tars}
    args = ["prepare", str(archive), str(out), "--workers", "1", "--shard-size", str(SHARD_SIZE), "--crop-size", "24"]
    assert main(args) == 0
    assert "0 written, 7 reused" in capsys.readouterr().out
    assert {tar: tar.stat().st_mtime_ns for tar in tars} == mtimes
    # a run killed before one shard finished: only that shard is redone
    (out / "shards" / "train-00001.json").unlink()
    report = prepare_archive(archive, out, workers=1, shard_size=SHARD_SIZE, crop_size=24)
    assert (report["shards_written"], report["shards_reused"]) == (1, 6)
    changed = [tar.name for tar in tars if tar.stat().st_mtime_ns != mtimes[tar]]
    assert changed == ["train-00001.tar"]
    with pytest.raises(InputError, match="other settings"):
        prepare_archive(archive, out, workers=1, shard_size=SHARD_SIZE, crop_size=32)


@pytest.mark.parametrize("split", ["train", "test"])
def test_prepared_dataset_samples(archive, prepared, split):
    out, _ = prepared
    dataset = PreparedDataset(out, split, train=True, image_size=32)
    assert set(dataset.keys) == _readable_keys(archive, split) and len(dataset) == len(dataset.keys)
    sample = dataset[len(dataset) - 1]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert sample["audio"].shape == (1, 128, 128) and sample["audio"].dtype == torch.float32
    assert sample["key"] == dataset.keys[-1]
    evaluation = PreparedDataset(out, split, train=False, image_size=32)
    a, b = evaluation[0], evaluation[0]
    torch.testing.assert_close(a, b)
    batch = next(iter(DataLoader(dataset, batch_size=2, num_workers=2)))  # loader workers open their own files
    assert batch["image"].shape == (2, 3, 32, 32) and batch["key"].tolist() == dataset.keys[:2]


def test_deferred_augmentation_is_the_loaders_applied_later(prepared):
    """defer_augment: the loader returns the stored uint8 crop and the drawn parameters; applying them to the
    collated batch gives what the loader-side augmentation gives with the same random state."""
    out, _ = prepared
    deferred = PreparedDataset(out, "train", image_size=16, defer_augment=True)
    direct = PreparedDataset(out, "train", image_size=16)
    torch.manual_seed(5)
    samples = [deferred[i] for i in range(3)]
    torch.manual_seed(5)
    expected = torch.stack([direct[i]["image"] for i in range(3)])
    batch = torch.utils.data.default_collate(samples)
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape[-2:] == (24, 24)
    torch.testing.assert_close(deferred.augment.apply(batch["image"], batch["augment"]), expected, atol=1e-4,
                               rtol=0)
    torch.testing.assert_close(batch["audio"], torch.stack([s["audio"] for s in samples]))
    assert PreparedDataset(out, "train", train=False, defer_augment=True)[0]["image"].dtype == torch.float32


def test_evaluation_window_is_the_start_of_the_clip(archive, prepared):
    out, _ = prepared
    cfg = FrontendConfig()
    dataset = PreparedDataset(out, "test", train=False)
    item = {i.key: i for i in read_metadata(archive)}[dataset.keys[0]]
    whole = LogMel(cfg)(load_audio(item.audio, cfg.sample_rate))
    torch.testing.assert_close(dataset[0]["audio"][0], whole[:, :128], atol=2e-2, rtol=1e-2)  # float16 storage


def test_long_recordings_keep_evenly_spread_chunks(tmp_path):
    cfg = FrontendConfig()
    rng = np.random.default_rng(0)
    path = tmp_path / "long.wav"
    sf.write(path, 0.1 * rng.standard_normal(20 * cfg.sample_rate).astype(np.float32), cfg.sample_rate)
    whole = LogMel(cfg)(load_audio(path, cfg.sample_rate))  # 862 frames
    spec = _spectrogram(path, cfg, max_frames=512)
    assert spec.shape == (2, 128, 256) and spec.dtype == np.float16
    last = whole.shape[1] - 256
    for chunk, start in zip(spec, (0, last)):
        np.testing.assert_allclose(chunk, whole[:, start : start + 256].numpy(), atol=2e-2, rtol=1e-2)
    assert _spectrogram(path, cfg, max_frames=1024).shape == (1, 128, whole.shape[1])


def test_stream_splits_items_over_ranks_and_workers(archive, prepared):
    out, _ = prepared
    test_keys = _readable_keys(archive, "test")
    shares = [[s["key"] for s in PreparedStream(out, "test", train=False, rank=r, world_size=2)] for r in range(2)]
    assert not set(shares[0]) & set(shares[1]) and set(shares[0]) | set(shares[1]) == test_keys
    train_keys = _readable_keys(archive, "train")
    ranks = [PreparedStream(out, "train", seed=1, rank=r, world_size=2, image_size=32) for r in range(2)]
    shares = [[s["key"] for s in rank] for rank in ranks]
    assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == len(train_keys) // 2  # equal steps on every rank
    assert not set(shares[0]) & set(shares[1]) and set(shares[0]) | set(shares[1]) <= train_keys
    ranks[0].set_epoch(1)
    assert [s["key"] for s in ranks[0]] != shares[0]  # a new order every epoch
    loader = DataLoader(PreparedStream(out, "train", image_size=32, world_size=1, rank=0), batch_size=4, num_workers=2)
    keys = [int(k) for batch in loader for k in batch["key"]]
    assert sorted(keys) == sorted(train_keys)
    sample = next(iter(PreparedStream(out, "val", rank=0, world_size=1)))
    assert sample["image"].shape == (3, 192, 192) and sample["audio"].shape == (1, 128, 128)


def test_both_readers_read_the_same_item_bytes(prepared):
    """Evaluation samples (no randomness) of every test item are the same from either reader."""
    out, _ = prepared
    stream = {s["key"]: s for s in PreparedStream(out, "test", train=False, rank=0, world_size=1, image_size=16)}
    mapped = PreparedDataset(out, "test", train=False, image_size=16)
    assert sorted(stream) == sorted(mapped.keys)
    for i, key in enumerate(mapped.keys):
        torch.testing.assert_close(stream[key], mapped[i])


def test_readers_accept_fsspec_urls(prepared):
    out, _ = prepared
    url = out.resolve().as_uri()
    assert PreparedDataset(url, "val", train=False)[0]["key"] == PreparedDataset(out, "val", train=False)[0]["key"]
    assert len([s for s in PreparedStream(url, "val", train=False, rank=0, world_size=1)]) == 2
    with pytest.raises(InputError, match="prepare"):
        PreparedDataset(out / "nothing", "val")
