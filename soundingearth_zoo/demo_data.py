"""A small synthetic archive in the SoundingEarth layout, whose images and sounds share something to learn.

Each item belongs to one of six scene types. A scene has its own look (colours and a texture: canopy blobs, wavy
water, street grids, field stripes, dune ripples, industrial blocks) and its own sound (bird chirps, surf, traffic
rumble and mains hum, cricket trills, wind gusts, machine pulses). Two per-item latents tie an image to *its*
recording beyond the scene type, so retrieval can do better than picking the right scene: ``density`` sets the
texture's frequency and the rate of sound events, ``tone`` sets the image's brightness and the sound's pitch.
Background noise, per-item colour and gain, stereo and sample-rate variation keep the task from being trivial.

The layout is the archive's (see ``archive``): ``metadata.csv``, ``images/<key>.jpg`` and the audio at
``raw_audio/<long_key>/<mp3name>``, MP3 for every fourth item and FLAC otherwise. Keys are consecutive, so every
split (``key % 10``) is populated, and scenes are shuffled over keys, so every split holds every scene. With
``corrupt=True`` three extra train items are broken the ways real downloads break (a truncated MP3, a JPEG of
garbage, a missing audio file); their ``description`` starts with ``corrupt:``. Everything depends only on the
seed; 240 items take about 12 s of CPU time.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from .archive import AUDIO_DIR, IMAGE_DIR, METADATA_COLUMNS, METADATA_FILE, split_of
from .atomic import atomic_path

__all__ = ["SCENES", "Scene", "cli_make_demo_data", "make_demo_archive", "render_image", "synthesize_audio"]

FIRST_KEY = 1000


@dataclass(frozen=True)
class Scene:
    """One scene type: how its tiles look, how it sounds, and where on Earth its items cluster."""

    name: str
    pattern: str  # blobs | waves | grid | stripes | ripples | blocks
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]  # RGB of the texture's low and high values
    frequency: tuple[float, float]  # texture cycles per tile, at density 0 and 1
    sound: str  # birds | surf | traffic | insects | wind | machines
    centre: tuple[float, float]  # latitude, longitude


SCENES = (
    Scene("forest", "blobs", ((28, 62, 26), (74, 112, 48)), (6, 16), "birds", (61.0, 25.0)),
    Scene("coast", "waves", ((18, 52, 96), (66, 110, 150)), (3, 7), "surf", (43.3, 5.4)),
    Scene("city", "grid", ((82, 82, 88), (178, 172, 166)), (6, 14), "traffic", (52.5, 13.4)),
    Scene("farmland", "stripes", ((152, 140, 58), (86, 128, 46)), (6, 18), "insects", (48.5, 11.0)),
    Scene("desert", "ripples", ((204, 172, 122), (168, 136, 92)), (18, 40), "wind", (31.0, -4.0)),
    Scene("industrial", "blocks", ((58, 50, 46), (128, 116, 104)), (2, 5), "machines", (51.5, 7.0)),
)


# ----------------------------------------------------------------------------------------------------- images
def _smooth_noise(rng: np.random.Generator, size: int, cells: float) -> np.ndarray:
    """Zero-mean, unit-ish noise ``[size, size]`` that varies over about ``cells`` blobs per side."""
    cells = max(round(cells), 2)
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def _texture(scene: Scene, size: int, frequency: float, rng: np.random.Generator) -> np.ndarray:
    """The scene's texture, values in [0, 1], ``[size, size]``."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    if scene.pattern == "blobs":
        return 1 / (1 + np.exp(-3 * _smooth_noise(rng, size, frequency)))
    if scene.pattern in ("waves", "stripes", "ripples"):
        wobble = {"waves": 1.5, "stripes": 0.0, "ripples": 0.6}[scene.pattern]
        phase = 2 * np.pi * frequency * u + wobble * np.pi * _smooth_noise(rng, size, 3)
        stripes = 0.5 + 0.5 * np.sin(phase)
        return stripes if scene.pattern != "stripes" else np.round(stripes * 2) / 2  # fields: hard edges
    if scene.pattern in ("grid", "blocks"):
        width = 0.2 if scene.pattern == "grid" else 0.12
        lines = ((u * frequency) % 1 < width) | ((v * frequency) % 1 < width)
        roofs = 0.5 + 0.25 * _smooth_noise(rng, size, 2 * frequency)
        return np.where(lines, 0.05, np.clip(roofs, 0, 1))
    raise ValueError(f"unknown pattern {scene.pattern!r}")


def render_image(scene: Scene, size: int, density: float, tone: float, rng: np.random.Generator) -> Image.Image:
    """A ``size`` px RGB tile of ``scene``; ``density`` and ``tone`` in [0, 1] are the item's shared latents."""
    low, high = (np.asarray(c, np.float32) + rng.normal(0, 8, 3) for c in scene.colours)
    frequency = np.interp(density, [0, 1], scene.frequency) * rng.uniform(0.9, 1.1)
    t = _texture(scene, size, frequency, rng)[..., None]
    rgb = low + (high - low) * t
    rgb *= 0.75 + 0.5 * tone  # brightness follows the tone latent
    rgb += 6 * rng.standard_normal(rgb.shape, dtype=np.float32)  # sensor grain
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")


# ------------------------------------------------------------------------------------------------------ audio
def _filtered_noise(rng: np.random.Generator, n: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``n`` samples of white noise shaped by ``gain(frequency in cycles per sample)``, unit RMS. The FFT runs
    on the next power of two: lengths with large prime factors make it a hundred times slower."""
    size = 1 << (n - 1).bit_length()
    spectrum = np.fft.rfft(rng.standard_normal(size, dtype=np.float32)) * gain(np.fft.rfftfreq(size).astype(np.float32))
    noise = np.fft.irfft(spectrum, size)[:n]
    return noise / (noise.std() + 1e-8)


def _band_noise(rng: np.random.Generator, n: int, sample_rate: int, low: float, high: float) -> np.ndarray:
    """White noise band-limited to ``[low, high]`` Hz, unit RMS."""
    return _filtered_noise(rng, n, lambda f: (f >= low / sample_rate) & (f <= high / sample_rate))


def _pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f noise, unit RMS: the hiss under every field recording."""
    return _filtered_noise(rng, n, lambda f: 1 / np.sqrt(np.maximum(f, 1 / n)))


def _envelope(rng: np.random.Generator, n: int, sample_rate: int, rate_hz: float) -> np.ndarray:
    """A smooth random envelope in [0, 1] that changes about ``rate_hz`` times a second."""
    points = max(int(n / sample_rate * rate_hz) + 2, 2)
    return np.interp(np.arange(n), np.linspace(0, n, points), rng.uniform(0, 1, points))


def _events(rng: np.random.Generator, n: int, sample_rate: int, rate_hz: float) -> np.ndarray:
    """Start samples of a Poisson process of ``rate_hz`` events a second."""
    count = rng.poisson(rate_hz * n / sample_rate)
    return np.sort(rng.integers(0, n, count))


def synthesize_audio(
    scene: Scene,
    seconds: float,
    sample_rate: int,
    density: float,
    tone: float,
    rng: np.random.Generator,
    noise_bed: np.ndarray | None = None,
) -> np.ndarray:
    """A mono float32 recording of ``scene``: its signature over pink background noise, a random stretch of
    ``noise_bed`` if given (one bed for a whole archive saves an FFT per item), fresh noise otherwise."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    pitch = 0.8 + 0.4 * tone  # the tone latent scales every frequency
    rate = 0.5 + density  # the density latent scales every event rate
    nyquist = sample_rate / 2
    signal = np.zeros(n)
    if scene.sound == "birds":  # short upward/downward sweeps around 2.5-5 kHz
        length = int(0.12 * sample_rate)
        tt = np.arange(length) / sample_rate
        for start in _events(rng, n, sample_rate, 4 * rate):
            f0, f1 = pitch * rng.uniform(2500, 4500, 2)
            chirp = np.sin(2 * np.pi * (f0 * tt + (f1 - f0) * tt**2 / (2 * tt[-1]))) * np.hanning(length)
            stop = min(start + length, n)
            signal[start:stop] += chirp[: stop - start]
    elif scene.sound == "surf":  # low-passed noise swelling every few seconds
        swell = 0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * rate * t + rng.uniform(0, 2 * np.pi))
        signal = _band_noise(rng, n, sample_rate, 30, 700 * pitch) * swell**2
    elif scene.sound == "traffic":  # rumble that comes and goes, over mains hum and its harmonics
        rumble = _band_noise(rng, n, sample_rate, 60, 500 * pitch) * _envelope(rng, n, sample_rate, rate)
        hum = sum(np.sin(2 * np.pi * 100 * pitch * k * t) / k for k in (1, 2, 3))
        signal = rumble + 0.3 * hum
    elif scene.sound == "insects":  # a narrow band near 5 kHz, trilled at tens of Hz
        carrier = _band_noise(rng, n, sample_rate, 4600 * pitch, min(5400 * pitch, nyquist - 1))
        trill = (np.sin(2 * np.pi * 25 * rate * t) > 0).astype(float)
        signal = carrier * trill * (_envelope(rng, n, sample_rate, 1.0) > 0.3)
    elif scene.sound == "wind":  # mid-band noise in slow gusts
        signal = _band_noise(rng, n, sample_rate, 300 * pitch, 1800 * pitch) * _envelope(rng, n, sample_rate, rate)
    elif scene.sound == "machines":  # a droning tone with regular broadband knocks
        signal = 0.5 * np.sin(2 * np.pi * 400 * pitch * t) + 0.25 * np.sin(2 * np.pi * 800 * pitch * t)
        period = int(sample_rate / (3 * rate))
        knock = _band_noise(rng, period, sample_rate, 200, 6000)[: period // 4] * np.hanning(period // 4)
        for start in range(int(rng.integers(0, period)), n - knock.size, period):
            signal[start : start + knock.size] += 2 * knock
    else:
        raise ValueError(f"unknown sound {scene.sound!r}")
    signal = signal / (np.abs(signal).max() + 1e-8)
    if noise_bed is None or noise_bed.size < n:
        background = _pink_noise(rng, n)
    else:
        start = int(rng.integers(0, noise_bed.size - n + 1))
        background = noise_bed[start : start + n]
    background = background * 10 ** (rng.uniform(-30, -15) / 20)
    mix = rng.uniform(0.2, 0.8) * (signal + background)  # per-item loudness
    return (mix / max(1.0, np.abs(mix).max() / 0.99)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- archive
#: (suffix, sample rate, channels) of the items in turn: mixed like a real archive, MP3 kept to a quarter because
#: encoding it dominates the time this takes.
AUDIO_FORMATS = ((".mp3", 22050, 1), (".flac", 44100, 2), (".flac", 22050, 1), (".flac", 32000, 1))
#: The ways real downloads break, for ``corrupt=True``.
CORRUPTIONS = ("truncated MP3", "garbage JPEG", "missing audio file")


@dataclass(frozen=True)
class _Item:
    key: int
    scene: Scene
    density: float
    tone: float
    latitude: float
    longitude: float
    audio_format: tuple[str, int, int]
    corruption: str | None = None

    @property
    def long_key(self) -> str:
        return f"aporee_demo_{self.key}"

    @property
    def mp3name(self) -> str:
        return f"demo_{self.key}{self.audio_format[0]}"

    def row(self) -> dict:
        """The item's line of ``metadata.csv`` (plus a ``scene`` column, for people and for tests)."""
        description = f"Synthetic {self.scene.name} scene (density {self.density:.2f}, tone {self.tone:.2f})"
        return {
            "key": self.key,
            "long_key": self.long_key,
            "mp3name": self.mp3name,
            "mp3samplerate": self.audio_format[1],
            "latitude": round(self.latitude, 5),
            "longitude": round(self.longitude, 5),
            "description": f"corrupt: {self.corruption}" if self.corruption else description,
            "title": f"{self.scene.name.capitalize()} {self.key}",
            "scene": self.scene.name,
        }


def _write_item(root: Path, item: _Item, image_size: int, seconds: float, seed: int, noise_bed: np.ndarray) -> None:
    rng = np.random.default_rng([seed, item.key])
    image_path = root / IMAGE_DIR / f"{item.key}.jpg"
    render_image(item.scene, image_size, item.density, item.tone, rng).save(image_path, quality=90)
    suffix, sample_rate, channels = item.audio_format
    length = seconds * rng.uniform(0.8, 1.25)
    mono = synthesize_audio(item.scene, length, sample_rate, item.density, item.tone, rng, noise_bed)
    audio = mono[:, None] if channels == 1 else np.stack([mono, 0.8 * mono + 0.01 * rng.standard_normal(mono.size)], 1)
    audio_path = root / AUDIO_DIR / item.long_key / item.mp3name
    audio_path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(audio_path, audio.astype(np.float32), sample_rate, format=suffix[1:].upper())
    if item.corruption == "truncated MP3":
        audio_path.write_bytes(audio_path.read_bytes()[:200])
    elif item.corruption == "garbage JPEG":
        image_path.write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(2000))
    elif item.corruption == "missing audio file":
        shutil.rmtree(audio_path.parent)


def make_demo_archive(
    out: str | os.PathLike,
    num_items: int = 240,
    seed: int = 0,
    *,
    image_size: int = 256,
    seconds: float = 4.0,
    corrupt: bool = False,
) -> Path:
    """Write a synthetic SoundingEarth archive of ``num_items`` items to ``out`` and return its path.

    Tiles are ``image_size`` px (the real ones are 1024, but the pipeline only takes relative crops), clips last
    0.8 to 1.25 times ``seconds``. ``corrupt=True`` adds three broken train items (see the module docstring).
    """
    if num_items < 1:
        raise ValueError("num_items must be positive")
    root = Path(out)
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (root / AUDIO_DIR).mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    scenes = rng.permutation(np.arange(num_items) % len(SCENES))
    items = []
    for index in range(num_items):
        scene = SCENES[scenes[index]]
        density, tone = rng.uniform(0, 1, 2)
        latitude, longitude = np.asarray(scene.centre) + rng.normal(0, 0.8, 2)
        audio_format = AUDIO_FORMATS[index % len(AUDIO_FORMATS)]
        items.append(_Item(FIRST_KEY + index, scene, density, tone, latitude, longitude, audio_format))
    if corrupt:
        spare_keys = (k for k in range(FIRST_KEY + num_items, FIRST_KEY + num_items + 30) if split_of(k) == "train")
        for like, corruption, key in zip(items, CORRUPTIONS, spare_keys):
            items.append(dataclasses.replace(like, key=key, audio_format=AUDIO_FORMATS[0], corruption=corruption))
    noise_bed = _pink_noise(rng, 1 << (int(1.25 * seconds * 44100)).bit_length())
    for item in items:
        _write_item(root, item, image_size, seconds, seed, noise_bed)
    with atomic_path(root / METADATA_FILE) as tmp, open(tmp, "w", newline="") as f:  # last: then it is complete
        writer = csv.DictWriter(f, fieldnames=[*METADATA_COLUMNS, "scene"])
        writer.writeheader()
        writer.writerows(item.row() for item in items)
    return root


def cli_make_demo_data(args) -> int:
    root = make_demo_archive(
        args.out, args.num_items, args.seed, image_size=args.image_size, seconds=args.seconds, corrupt=args.corrupt
    )
    print(f"wrote {args.num_items} items{' and 3 corrupt ones' if args.corrupt else ''} to {root}")
    return 0
