"""The synthetic archive: the SoundingEarth layout, real encoded files, every split populated, deterministic."""
from __future__ import annotations

import csv
import hashlib
import itertools

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from soundingearth_zoo.archive import read_metadata
from soundingearth_zoo.cli import main
from soundingearth_zoo.demo_data import SCENES, make_demo_archive, render_image, synthesize_audio


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.*")}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_demo_archive(tmp_path_factory.mktemp("demo"), num_items=12, seed=3, image_size=48, seconds=3.2)


def test_layout_and_files(archive):
    with open(archive / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    for column in ("key", "long_key", "mp3name", "mp3samplerate", "latitude", "longitude", "description", "title"):
        assert column in rows[0]
    suffixes = set()
    for row in rows:
        with Image.open(archive / "images" / f"{row['key']}.jpg") as image:
            assert image.format == "JPEG" and image.size == (48, 48)
        info = sf.info(archive / "raw_audio" / row["long_key"] / row["mp3name"])
        assert info.samplerate == int(row["mp3samplerate"])
        assert 0.8 * 3.2 - 0.1 <= info.duration <= 1.25 * 3.2 + 0.1
        suffixes.add(row["mp3name"].rsplit(".", 1)[1])
    assert suffixes == {"mp3", "flac"}
    assert {row["scene"] for row in rows} == {scene.name for scene in SCENES}


def test_every_split_populated(archive):
    items = read_metadata(archive)
    assert {item.split for item in items} == {"train", "val", "test"}
    # coordinates cluster per scene: every item lies within a few degrees of its scene's centre
    with open(archive / "metadata.csv", newline="") as f:
        by_key = {int(row["key"]): row["scene"] for row in csv.DictReader(f)}
    centres = {scene.name: np.asarray(scene.centre) for scene in SCENES}
    for item in items:
        assert np.abs(np.asarray([item.latitude, item.longitude]) - centres[by_key[item.key]]).max() < 5


def test_deterministic_for_a_seed(archive, tmp_path):
    again = make_demo_archive(tmp_path / "again", num_items=12, seed=3, image_size=48, seconds=3.2)
    assert _digest(again) == _digest(archive)
    other = make_demo_archive(tmp_path / "other", num_items=12, seed=4, image_size=48, seconds=3.2)
    assert _digest(other)["metadata.csv"] != _digest(archive)["metadata.csv"]


def _features(rng, per_scene):
    """Mean colour of a tile and band energies of a clip (random latents), with the scene labels."""
    edges = np.geomspace(50, 8000, 25)
    colours, spectra, labels = [], [], []
    for label, scene in enumerate(SCENES):
        for density, tone in rng.uniform(0, 1, (per_scene, 2)):
            colours.append(np.asarray(render_image(scene, 32, density, tone, rng), np.float32).mean((0, 1)))
            clip = synthesize_audio(scene, 1.0, 16000, density, tone, rng)
            power, freqs = np.abs(np.fft.rfft(clip)) ** 2, np.fft.rfftfreq(clip.size, 1 / 16000)
            bands = np.array([power[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in itertools.pairwise(edges)])
            spectra.append(np.log(bands / bands.sum() + 1e-9))
            labels.append(label)
    return np.array(colours), np.array(spectra), np.array(labels)


def test_scenes_are_recognisable_from_either_modality():
    """The correspondence is learnable: even a nearest-centroid classifier on mean colour, or on the spectrum's
    shape, tells the scenes apart far above chance (1/6), despite the per-item latents and noise."""
    rng = np.random.default_rng(0)
    train, test = _features(rng, 4), _features(rng, 6)
    for modality in (0, 1):
        centroids = np.stack([train[modality][train[2] == k].mean(0) for k in range(len(SCENES))])
        distances = ((test[modality][:, None] - centroids[None]) ** 2).sum(-1)
        assert (distances.argmin(1) == test[2]).mean() >= 0.6


def test_corrupt_items_and_cli(tmp_path, capsys):
    assert main(["make-demo-data", str(tmp_path), "--num-items", "6", "--image-size", "32", "--corrupt"]) == 0
    assert "3 corrupt" in capsys.readouterr().out
    corrupt = {i.key: i for i in read_metadata(tmp_path) if i.description.startswith("corrupt:")}
    assert len(corrupt) == 3 and all(item.split == "train" for item in corrupt.values())
    kinds = {item.description: item for item in corrupt.values()}
    assert kinds["corrupt: truncated MP3"].audio.stat().st_size < 1000
    assert not kinds["corrupt: missing audio file"].audio.exists()
    with pytest.raises(OSError):
        Image.open(kinds["corrupt: garbage JPEG"].image).load()
