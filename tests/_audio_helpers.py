"""Real encoded audio files for the tests: soundfile (libsndfile) writes MP3, FLAC, OGG and WAV."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

FORMATS = {".mp3": "MP3", ".flac": "FLAC", ".ogg": "OGG", ".wav": "WAV"}


def make_signal(seconds: float, sample_rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """``[frames, channels]`` float32: a gliding tone plus noise, a different gain per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    tone = np.sin(2 * np.pi * (300 * t + 200 * t**2 / max(seconds, 1e-3)))
    mono = 0.4 * tone + 0.02 * rng.standard_normal(t.size)
    gains = np.linspace(1.0, 0.3, channels)
    return (mono[:, None] * gains[None, :]).astype(np.float32)


def write_audio(path: Path, data: np.ndarray, sample_rate: int) -> Path:
    """Encode ``data`` (``[frames, channels]``) in the format the suffix names."""
    subtype = "PCM_16" if path.suffix in (".wav", ".flac") else None
    sf.write(path, data, sample_rate, format=FORMATS[path.suffix], subtype=subtype)
    return path
