"""The audio front end: field recordings to normalised log-mel windows, the audio tower's input.

Decoding is soundfile's (libsndfile: MP3, FLAC, OGG, WAV), down-mixed to mono and resampled with torchaudio. The
spectrogram is torchaudio's ``MelSpectrogram`` (Hann window, centred frames with reflect padding, power 2, Slaney
mel scale and area normalisation, as librosa's defaults), then ``log(mel + log_offset)``, then a fixed
``(x - mean) / std``. Every number lives in ``FrontendConfig``, which is saved with each audio weight (safetensors
metadata key ``FRONTEND_METADATA_KEY``, Hub ``config.json`` key ``FRONTEND_CONFIG_KEY``) and read back on load.

Windows are ``window_frames`` consecutive frames (128, the paper's 1x128x128 input). A window read from a file by
seeking (``read_window``) equals the same crop of the whole file's spectrogram: the read takes a margin of
``n_fft`` samples on each side, so no frame sees padding that the whole-file computation would not see. Hours-long
recordings are therefore never decoded whole, for training (``read_random_window``) nor for embedding
(``read_windows``, which seeks to the windows it keeps). libsndfile's MP3 seeks are sample-exact (tested), but they
walk the frame headers from the start of the file, so their cost grows with the offset (measured: 5 ms at 10 s,
140 ms at 30 minutes into a 44.1 kHz stereo file); ``read_windows`` therefore reads its windows in order through
one open file.

Clips shorter than one window are padded at the end with the value digital silence takes
(``FrontendConfig.silence_value``), so a short clip reads as the clip followed by silence; repeating it instead
would invent a periodicity the recording does not have.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import soundfile as sf
import torch
import torchaudio
from safetensors import SafetensorError, safe_open
from torch import nn

from .errors import InputError

__all__ = [
    "FRONTEND_CONFIG_KEY",
    "FRONTEND_METADATA_KEY",
    "AudioDecodeError",
    "AudioInfo",
    "FrontendConfig",
    "LogMel",
    "audio_info",
    "frame_windows",
    "load_audio",
    "random_window",
    "read_frontend",
    "read_random_window",
    "read_window",
    "read_windows",
    "read_windows_at",
]

#: Key of the front-end config (JSON) in the metadata of an audio tower's safetensors file.
FRONTEND_METADATA_KEY = "soundingearth_frontend"
#: Key of the front-end config (a dict) in an audio tower's Hub ``config.json``.
FRONTEND_CONFIG_KEY = "audio_frontend"


class AudioDecodeError(InputError):
    """An audio file that cannot be read: missing, empty, corrupt or in a format libsndfile does not know."""


@dataclass(frozen=True)
class FrontendConfig:
    """Every parameter between a waveform and the audio tower's input.

    ``mean`` and ``std`` are fixed constants, not per-clip statistics, so a clip's loudness survives into the
    features. They are the mean and standard deviation of the log-mel values (all frames and bands) of 22
    minutes of synthetic field-recording-like audio at -50 to -20 dBFS (pink noise, gusty wind, hum, bird-like
    chirps, up to 10 % digital silence), encoded to 44.1 kHz MP3: -7.43 and 4.48, measured with
    ``python benchmarks/audio_frontend.py --calibrate --clips 44``. ``log_offset`` (1e-10) lies below the mel
    power of 16-bit quantisation noise (median 1.3e-9 with this config), so even quiet recordings keep their
    detail, and digital silence maps to the finite ``silence_value``.
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None  # None: half the sample rate
    log_offset: float = 1e-10
    mean: float = -7.4
    std: float = 4.5
    window_frames: int = 128
    max_windows: int | None = 64  # cap on windows per clip when a whole clip is embedded; None: no cap

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FrontendConfig:
        """Build from ``to_dict()`` output; unknown keys are an error, not silently dropped, since a front end
        that differs from the one a weight was trained with gives wrong embeddings without failing."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown audio front-end settings: {', '.join(sorted(unknown))}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FrontendConfig:
        return cls.from_dict(json.loads(text))

    @property
    def silence_value(self) -> float:
        """The normalised log-mel value of digital silence, used to pad clips shorter than one window."""
        return (math.log(self.log_offset) - self.mean) / self.std

    @property
    def window_samples(self) -> int:
        """Samples (at ``sample_rate``) whose centred frames make exactly one window."""
        return (self.window_frames - 1) * self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames of the spectrogram of ``num_samples`` samples (centred frames)."""
        return 1 + num_samples // self.hop_length


def read_frontend(path: str | os.PathLike) -> FrontendConfig | None:
    """The front end saved with an audio weight, from a ``.safetensors`` file's metadata or a Hub
    ``config.json``; None when the file carries none."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            values = json.loads(path.read_text(encoding="utf-8")).get(FRONTEND_CONFIG_KEY)
            return None if values is None else FrontendConfig.from_dict(values)
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as f:
                text = (f.metadata() or {}).get(FRONTEND_METADATA_KEY)
            return None if text is None else FrontendConfig.from_json(text)
    except (OSError, ValueError, TypeError, SafetensorError) as err:  # ValueError: bad JSON, InputError
        raise InputError(f"cannot read the audio front end saved in {path}: {err}") from err
    return None


class AudioInfo(NamedTuple):
    frames: int
    sample_rate: int
    channels: int
    duration: float  # seconds


def _open(path: str | os.PathLike) -> sf.SoundFile:
    try:
        return sf.SoundFile(os.fspath(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:  # TypeError: unknown format
        if not os.path.exists(path):
            reason = "no such file"
        elif os.path.isfile(path) and os.path.getsize(path) == 0:
            reason = "empty file"
        else:
            reason = str(err).splitlines()[0]
        raise AudioDecodeError(f"cannot read audio {path}: {reason}") from err


def _info(f: sf.SoundFile) -> AudioInfo:
    if f.frames <= 0:
        raise AudioDecodeError(f"cannot read audio {f.name}: no samples")
    return AudioInfo(f.frames, f.samplerate, f.channels, f.frames / f.samplerate)


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Length, sample rate and channels from the header, without decoding; MP3 lengths are libsndfile's."""
    with _open(path) as f:
        return _info(f)


def _decode(f: sf.SoundFile, sample_rate: int, offset_s: float, duration_s: float | None) -> torch.Tensor:
    try:
        start = min(max(round(offset_s * f.samplerate), 0), max(f.frames, 0))
        f.seek(start)
        frames = -1 if duration_s is None else max(round(duration_s * f.samplerate), 0)
        data = f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioDecodeError(f"cannot decode audio {f.name}: {str(err).splitlines()[0]}") from err
    if data.shape[0] == 0 and duration_s != 0:
        where = f" from {offset_s:.2f} s (truncated?)" if offset_s else ""
        raise AudioDecodeError(f"cannot decode audio {f.name}: no samples{where}")
    waveform = torch.from_numpy(data).mean(dim=1)
    if f.samplerate != sample_rate:
        waveform = _resampler(f.samplerate, sample_rate)(waveform)
    return waveform


def load_audio(
    path: str | os.PathLike, sample_rate: int, offset_s: float = 0.0, duration_s: float | None = None
) -> torch.Tensor:
    """Mono float32 waveform ``[T]`` at ``sample_rate``, from ``offset_s`` for ``duration_s`` seconds (to the
    end if None). Only that stretch is decoded: libsndfile seeks, which matters for recordings of hours."""
    with _open(path) as f:
        return _decode(f, sample_rate, offset_s, duration_s)


@functools.lru_cache(maxsize=16)
def _resampler(orig_freq: int, new_freq: int) -> torchaudio.transforms.Resample:
    """A resampler with its filter kernel computed once per pair of rates (half the cost of a 3 s read)."""
    return torchaudio.transforms.Resample(orig_freq, new_freq)


class LogMel(nn.Module):
    """Waveform ``[..., T]`` at ``cfg.sample_rate`` to normalised log-mel ``[..., n_mels, 1 + T // hop]``.

    Computed in float32 even under autocast: bf16 has too few bits for the power spectrum's dynamic range.
    """

    def __init__(self, cfg: FrontendConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or FrontendConfig()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            n_mels=cfg.n_mels,
            power=2.0,
            center=True,
            pad_mode="reflect",
            norm="slaney",
            mel_scale="slaney",
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        # Reflect padding needs more than n_fft // 2 samples: extend tiny clips with silence first.
        too_short = cfg.n_fft // 2 + 1 - waveform.shape[-1]
        if too_short > 0:
            waveform = nn.functional.pad(waveform, (0, too_short))
        with torch.autocast(waveform.device.type, enabled=False):
            mel = self.mel(waveform.float())
            return (torch.log(mel + cfg.log_offset) - cfg.mean) / cfg.std


def _pad_frames(spec: torch.Tensor, cfg: FrontendConfig) -> torch.Tensor:
    missing = cfg.window_frames - spec.shape[-1]
    if missing <= 0:
        return spec
    return nn.functional.pad(spec, (0, missing), value=cfg.silence_value)


def _window_starts(num_frames: int, cfg: FrontendConfig, max_windows: int | None) -> list[int]:
    """First frames of the non-overlapping windows of a clip, thinned to ``max_windows`` evenly spread ones."""
    count = max(num_frames // cfg.window_frames, 1)
    if max_windows is not None and count > max_windows:
        keep = torch.linspace(0, count - 1, max_windows).round().long().tolist()
    else:
        keep = range(count)
    return [i * cfg.window_frames for i in keep]


def frame_windows(spec: torch.Tensor, cfg: FrontendConfig, max_windows: int | None = None) -> torch.Tensor:
    """Cut a clip's spectrogram ``[n_mels, T]`` into non-overlapping windows ``[W, 1, n_mels, window_frames]``.

    A trailing partial window is dropped unless it is the only one (then it is padded with silence). At most
    ``max_windows`` windows (default ``cfg.max_windows``), evenly spread over the clip, are kept.
    """
    spec = _pad_frames(spec.reshape(cfg.n_mels, -1), cfg)
    max_windows = cfg.max_windows if max_windows is None else max_windows
    starts = _window_starts(spec.shape[-1], cfg, max_windows)
    return torch.stack([spec[:, s : s + cfg.window_frames] for s in starts]).unsqueeze(1)


def random_window(spec: torch.Tensor, cfg: FrontendConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One window ``[1, n_mels, window_frames]`` at a uniformly random frame of a spectrogram ``[n_mels, T]``."""
    spec = _pad_frames(spec.reshape(cfg.n_mels, -1), cfg)
    start = int(torch.randint(spec.shape[-1] - cfg.window_frames + 1, (), generator=generator))
    return spec[None, :, start : start + cfg.window_frames]


def _num_frames(f: sf.SoundFile, cfg: FrontendConfig) -> int:
    """Frames of the whole file's spectrogram, from the header: resampling gives ceil(frames * new / orig)."""
    info = _info(f)
    g = math.gcd(info.sample_rate, cfg.sample_rate)
    return cfg.num_frames(math.ceil(cfg.sample_rate // g * info.frames / (info.sample_rate // g)))


def _read_window(f: sf.SoundFile, cfg: FrontendConfig, start_frame: int, logmel: LogMel) -> torch.Tensor:
    margin = math.ceil(cfg.n_fft / cfg.hop_length)  # in frames
    first = max(start_frame - margin, 0)
    num_samples = (start_frame - first + cfg.window_frames - 1 + margin) * cfg.hop_length
    waveform = _decode(f, cfg.sample_rate, first * cfg.hop_length / cfg.sample_rate, num_samples / cfg.sample_rate)
    spec = logmel(waveform)[:, start_frame - first : start_frame - first + cfg.window_frames]
    return _pad_frames(spec, cfg).unsqueeze(0)


def read_window(
    path: str | os.PathLike, cfg: FrontendConfig, start_frame: int, logmel: LogMel | None = None
) -> torch.Tensor:
    """Frames ``start_frame`` to ``start_frame + window_frames`` of the file's spectrogram, ``[1, n_mels,
    window_frames]``, decoding only them plus a margin of ``n_fft`` samples each side (padded with silence where
    the file ends first)."""
    with _open(path) as f:
        return _read_window(f, cfg, start_frame, logmel or LogMel(cfg))


def read_windows_at(
    path: str | os.PathLike, cfg: FrontendConfig, starts: Sequence[int], logmel: LogMel | None = None
) -> torch.Tensor:
    """``read_window`` at each of ``starts``, ``[W, 1, n_mels, window_frames]``, in order through one open file:
    libsndfile's MP3 seeks walk the frame headers from the start, so reopening the file per window costs more."""
    logmel = logmel or LogMel(cfg)
    with _open(path) as f:
        return torch.stack([_read_window(f, cfg, start, logmel) for start in starts])


def read_random_window(
    path: str | os.PathLike,
    cfg: FrontendConfig,
    generator: torch.Generator | None = None,
    logmel: LogMel | None = None,
) -> torch.Tensor:
    """One training sample: a uniformly random window ``[1, n_mels, window_frames]`` of an audio file, read by
    seeking. Same distribution as ``random_window`` on the whole file's spectrogram, at a fraction of the cost."""
    with _open(path) as f:
        start = int(torch.randint(max(_num_frames(f, cfg) - cfg.window_frames, 0) + 1, (), generator=generator))
        return _read_window(f, cfg, start, logmel or LogMel(cfg))


def read_windows(
    path: str | os.PathLike, cfg: FrontendConfig, max_windows: int | None = None, logmel: LogMel | None = None
) -> torch.Tensor:
    """``frame_windows`` of a whole file, ``[W, 1, n_mels, window_frames]``. When the cap thins the windows, only
    the kept ones are read, in order through one open file, so embedding a recording of hours decodes minutes."""
    logmel = logmel or LogMel(cfg)
    max_windows = cfg.max_windows if max_windows is None else max_windows
    with _open(path) as f:
        num_frames = _num_frames(f, cfg)
        if max_windows is None or num_frames // cfg.window_frames <= max_windows:
            return frame_windows(logmel(_decode(f, cfg.sample_rate, 0.0, None)), cfg, max_windows)
        starts = _window_starts(num_frames, cfg, max_windows)
        return torch.stack([_read_window(f, cfg, start, logmel) for start in starts])
