"""Reading the raw archive: metadata, reference splits, and corrupt or missing files skipped and reported."""
from __future__ import annotations

import pytest
import torch

from soundingearth_zoo.archive import ArchiveDataset, read_metadata, split_of
from soundingearth_zoo.audio import FrontendConfig, LogMel, load_audio
from soundingearth_zoo.demo_data import make_demo_archive
from soundingearth_zoo.errors import InputError
from soundingearth_zoo.images import load_image


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """10 good items (keys 1000-1009) and 3 broken train items."""
    return make_demo_archive(tmp_path_factory.mktemp("archive"), num_items=10, image_size=64, corrupt=True)


def _corrupt_keys(archive):
    return {item.key for item in read_metadata(archive) if item.description.startswith("corrupt:")}


def test_split_of_follows_the_reference_code():
    expected = ["train", "train", "test", "train", "train", "test", "train", "val", "train", "train"]
    assert [split_of(k) for k in range(10)] == expected
    assert split_of(12347) == "val" and split_of(-3) == "val"  # Python's modulo, as pandas' in the reference


def test_read_metadata(archive, tmp_path):
    items = read_metadata(archive)
    assert [item.key for item in items] == sorted(item.key for item in items) and len(items) == 13
    item = items[0]
    assert item.image == archive / "images" / "1000.jpg"
    assert item.audio.parent.parent == archive / "raw_audio" and item.audio.is_file()
    assert {i.key for i in read_metadata(archive, "test")} == {1002, 1005}
    with pytest.raises(InputError, match="split"):
        read_metadata(archive, "validation")
    with pytest.raises(InputError, match="not a SoundingEarth archive"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.csv").write_text("key,latitude\n1,2\n")
    with pytest.raises(InputError, match="long_key"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.csv").write_text("key,long_key,mp3name,latitude,longitude\n1,a,b.mp3,1,2\n,a,c.mp3,1,2\n")
    assert [i.key for i in read_metadata(tmp_path)] == [1]  # a row without a key is dropped, not a crash


def test_dataset_skips_and_reports_corrupt_items(archive, caplog):
    dataset = ArchiveDataset(archive, "train", frontend=FrontendConfig())
    corrupt = _corrupt_keys(archive)
    assert len(corrupt) == 3
    assert set(dataset.skipped) == {max(corrupt)}  # the missing file is known before reading
    keys = [dataset[i]["key"] for i in range(len(dataset))]
    assert set(dataset.skipped) == corrupt
    assert "audio" in dataset.skipped[min(corrupt)] and "image" in dataset.skipped[sorted(corrupt)[1]]
    assert not corrupt & set(keys)
    assert set(keys) == {item.key for item in read_metadata(archive, "train")} - corrupt
    assert "skipping item" in caplog.text


def test_sample_shapes_and_windows(archive):
    cfg = FrontendConfig()
    train = ArchiveDataset(archive, "val", frontend=cfg)[0]
    assert train["key"] == 1007
    assert train["image"].shape == (3, 192, 192) and train["image"].dtype == torch.float32
    assert train["audio"].shape == (1, cfg.n_mels, cfg.window_frames) and train["audio"].dtype == torch.float32
    evaluation = ArchiveDataset(archive, "val", frontend=cfg, train=False)
    first = evaluation[0]
    item = evaluation.items[0]
    whole = LogMel(cfg)(load_audio(item.audio, cfg.sample_rate))  # eval = the first window of the whole clip
    torch.testing.assert_close(first["audio"][0], whole[:, : cfg.window_frames], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(evaluation[0]["image"], first["image"])  # no randomness when evaluating


def test_deferred_augmentation_of_the_tile(archive):
    """defer_augment: the tile's central half as uint8 and the drawn parameters, which apply() turns into what the
    loader-side augmentation gives with the same random state."""
    deferred = ArchiveDataset(archive, "val", defer_augment=True)
    torch.manual_seed(2)
    sample = deferred[0]
    torch.manual_seed(2)
    expected = ArchiveDataset(archive, "val")[0]["image"]
    tile = load_image(deferred.items[0].image)
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, tile.height // 2, tile.width // 2)
    out = deferred.augment.apply(sample["image"][None], sample["augment"][None])[0]
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="image_transform"):
        ArchiveDataset(archive, "val", defer_augment=True, image_transform=lambda image: image)


def test_dataset_fails_clearly_when_nothing_is_readable(tmp_path):
    root = make_demo_archive(tmp_path, num_items=3, image_size=32)
    for image in (root / "images").iterdir():
        image.write_bytes(b"not a jpeg")
    dataset = ArchiveDataset(root, "train")
    with pytest.raises(InputError, match="no item"):
        dataset[0]
