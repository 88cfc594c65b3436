"""The audio front end: decoding, seeking, the log-mel spectrogram against an independent reference, windows."""
from __future__ import annotations

import dataclasses

import librosa
import numpy as np
import pytest
import torch
import torchaudio
from _audio_helpers import make_signal, write_audio

from soundingearth_zoo.audio import (
    AudioDecodeError,
    FrontendConfig,
    LogMel,
    audio_info,
    frame_windows,
    load_audio,
    random_window,
    read_random_window,
    read_window,
    read_windows,
)
from soundingearth_zoo.errors import InputError

CFG = FrontendConfig()


def reference_logmel(waveform: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """The front end written out in numpy: centred frames with reflect padding, periodic Hann window, |FFT|^2,
    librosa's Slaney mel filters, log with offset, fixed normalisation."""
    x = np.pad(waveform.astype(np.float64), cfg.n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)
    starts = range(0, len(x) - cfg.n_fft + 1, cfg.hop_length)
    power = np.abs(np.fft.rfft(np.stack([x[s : s + cfg.n_fft] * window for s in starts]), axis=1)) ** 2
    filters = librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, htk=False, norm="slaney"
    )
    return (np.log(filters @ power.T + cfg.log_offset) - cfg.mean) / cfg.std


@pytest.mark.parametrize(
    "cfg",
    [CFG, FrontendConfig(sample_rate=16000, n_fft=512, hop_length=160, n_mels=64, f_min=50.0, f_max=7000.0)],
    ids=["default", "custom"],
)
def test_logmel_matches_reference(cfg):
    waveform = make_signal(1.5, cfg.sample_rate)[:, 0]
    ours = LogMel(cfg)(torch.from_numpy(waveform)).numpy()
    ref = reference_logmel(waveform, cfg)
    assert ours.shape == ref.shape == (cfg.n_mels, cfg.num_frames(len(waveform)))
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    assert ours.std() > 0.2  # a real spectrogram, not a constant


def test_logmel_batches_and_stays_float32_under_autocast():
    waves = torch.from_numpy(make_signal(1.0, CFG.sample_rate, channels=3).T.copy())
    logmel = LogMel(CFG)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batched = logmel(waves)
    assert batched.dtype == torch.float32 and batched.shape == (3, CFG.n_mels, CFG.num_frames(waves.shape[-1]))
    torch.testing.assert_close(batched[1], logmel(waves[1]))


def test_silence_is_finite_and_equals_the_padding_value():
    spec = LogMel(CFG)(torch.zeros(CFG.sample_rate))
    assert torch.isfinite(spec).all()
    torch.testing.assert_close(spec, torch.full_like(spec, CFG.silence_value))


def test_config_round_trip_and_unknown_keys():
    cfg = dataclasses.replace(CFG, n_mels=64, f_max=8000.0, max_windows=None)
    assert FrontendConfig.from_dict(cfg.to_dict()) == cfg
    assert FrontendConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(InputError, match="hop"):
        FrontendConfig.from_dict({**cfg.to_dict(), "hop": 256})


@pytest.mark.parametrize(
    "suffix, sample_rate, channels",
    [(".mp3", 44100, 2), (".mp3", 8000, 1), (".flac", 96000, 6), (".wav", 48000, 2), (".ogg", 16000, 1)],
)
def test_decode_any_format_rate_and_channels(tmp_path, suffix, sample_rate, channels):
    data = make_signal(2.0, sample_rate, channels)
    path = write_audio(tmp_path / f"clip{suffix}", data, sample_rate)
    info = audio_info(path)
    assert (info.sample_rate, info.channels) == (sample_rate, channels)
    assert info.duration == pytest.approx(2.0, abs=0.06)

    waveform = load_audio(path, CFG.sample_rate)
    assert waveform.dtype == torch.float32 and waveform.ndim == 1
    expected = torchaudio.functional.resample(torch.from_numpy(data.mean(axis=1)), sample_rate, CFG.sample_rate)
    if suffix in (".flac", ".wav"):  # lossless up to 16-bit quantisation
        torch.testing.assert_close(waveform, expected, atol=2e-4, rtol=0)
    else:  # lossy: same length and loudness, and it tracks the signal
        assert waveform.shape[0] == pytest.approx(expected.shape[0], abs=0.06 * CFG.sample_rate)
        n = min(len(waveform), len(expected))
        ours, ref = waveform[:n].numpy(), expected[:n].numpy()
        assert ours.std() == pytest.approx(ref.std(), rel=0.15)
        assert np.corrcoef(ours, ref)[0, 1] > 0.9


@pytest.mark.parametrize("suffix", [".mp3", ".flac"])
def test_seeking_read_equals_slice_of_whole_decode(tmp_path, suffix):
    path = write_audio(tmp_path / f"long{suffix}", make_signal(8.0, 44100, 2), 44100)
    whole = load_audio(path, 44100)
    for offset in (0.25, 3.0, 6.1):
        part = load_audio(path, 44100, offset_s=offset, duration_s=1.5)
        start = round(offset * 44100)
        assert part.shape == (round(1.5 * 44100),)
        torch.testing.assert_close(part, whole[start : start + len(part)], atol=1e-5, rtol=0)


@pytest.mark.parametrize("suffix", [".mp3", ".flac"])
def test_read_window_equals_crop_of_whole_spectrogram(tmp_path, suffix):
    # 44.1 kHz to 22.05 kHz keeps window starts on the source's sample grid, so seeking reads are exact
    path = write_audio(tmp_path / f"clip{suffix}", make_signal(6.5, 44100), 44100)
    logmel = LogMel(CFG)
    spec = logmel(load_audio(path, CFG.sample_rate))
    for start in (0, 1, 2, 137, spec.shape[-1] - CFG.window_frames, spec.shape[-1] - 40):
        window = read_window(path, CFG, start, logmel)
        expected = frame_windows(spec[:, start : start + CFG.window_frames], CFG, max_windows=1)[0]
        torch.testing.assert_close(window, expected, atol=1e-4, rtol=0)

    capped = read_windows(path, CFG, max_windows=2, logmel=logmel)
    torch.testing.assert_close(capped, frame_windows(spec, CFG, max_windows=2), atol=1e-4, rtol=0)
    assert capped.shape == (2, 1, CFG.n_mels, CFG.window_frames)


def test_read_window_off_the_sample_grid_is_close(tmp_path):
    path = write_audio(tmp_path / "clip.wav", make_signal(8.0, 48000), 48000)
    spec = LogMel(CFG)(load_audio(path, CFG.sample_rate))
    window = read_window(path, CFG, 101)
    assert (window[0] - spec[:, 101 : 101 + CFG.window_frames]).abs().mean() < 0.02


def test_frame_windows_counts_and_cap():
    spec = torch.randn(CFG.n_mels, 5 * CFG.window_frames + 50)
    windows = frame_windows(spec, dataclasses.replace(CFG, max_windows=None))
    assert windows.shape == (5, 1, CFG.n_mels, CFG.window_frames)
    torch.testing.assert_close(windows[3, 0], spec[:, 3 * CFG.window_frames : 4 * CFG.window_frames])
    capped = frame_windows(spec, CFG, max_windows=3)  # first, middle and last of the five
    torch.testing.assert_close(capped, windows[[0, 2, 4]])


def test_short_clip_is_padded_with_silence(tmp_path):
    path = write_audio(tmp_path / "short.flac", make_signal(0.5, 22050), 22050)
    spec = LogMel(CFG)(load_audio(path, CFG.sample_rate))
    assert spec.shape[-1] < CFG.window_frames
    windows = read_windows(path, CFG)
    assert windows.shape == (1, 1, CFG.n_mels, CFG.window_frames)
    torch.testing.assert_close(windows[0, 0, :, : spec.shape[-1]], spec)
    assert (windows[0, 0, :, spec.shape[-1] :] == CFG.silence_value).all()
    torch.testing.assert_close(read_random_window(path, CFG), windows[0])
    torch.testing.assert_close(random_window(spec, CFG), windows[0])


def test_random_window_is_uniform_over_starts_and_seeded():
    spec = torch.arange(CFG.window_frames + 2, dtype=torch.float32).expand(CFG.n_mels, -1)
    starts = [int(random_window(spec, CFG)[0, 0, 0]) for _ in range(60)]
    assert set(starts) == {0, 1, 2}
    a = random_window(spec, CFG, torch.Generator().manual_seed(3))
    b = random_window(spec, CFG, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_read_random_window_is_a_window_of_the_clip(tmp_path):
    path = write_audio(tmp_path / "clip.flac", make_signal(6.0, 44100), 44100)
    spec = LogMel(CFG)(load_audio(path, CFG.sample_rate))
    window = read_random_window(path, CFG, torch.Generator().manual_seed(0))
    assert window.shape == (1, CFG.n_mels, CFG.window_frames)
    errors = [
        (window[0] - spec[:, s : s + CFG.window_frames]).abs().max()
        for s in range(spec.shape[-1] - CFG.window_frames + 1)
    ]
    assert min(errors) < 1e-4


def test_silent_file_gives_finite_windows(tmp_path):
    path = write_audio(tmp_path / "silence.wav", np.zeros((3 * 22050, 1), np.float32), 22050)
    windows = read_windows(path, CFG)
    assert torch.isfinite(windows).all()
    torch.testing.assert_close(windows, torch.full_like(windows, CFG.silence_value))


def test_unreadable_files_raise_one_line_input_errors(tmp_path):
    good = write_audio(tmp_path / "good.mp3", make_signal(6.0, 44100), 44100).read_bytes()
    (tmp_path / "empty.mp3").write_bytes(b"")
    (tmp_path / "noise.mp3").write_bytes(bytes(4096))
    (tmp_path / "text.wav").write_text("not audio at all")
    for name, reason in [("empty.mp3", "empty file"), ("noise.mp3", "noise.mp3"), ("text.wav", "text.wav"), ("missing.flac", "no such")]:
        with pytest.raises(AudioDecodeError, match=reason) as err:
            load_audio(tmp_path / name, CFG.sample_rate)
        assert isinstance(err.value, InputError) and "\n" not in str(err.value)

    # A truncated MP3 decodes up to the cut; past it, a seeking read fails cleanly.
    truncated = tmp_path / "truncated.mp3"
    truncated.write_bytes(good[: len(good) // 4])
    assert 0 < load_audio(truncated, CFG.sample_rate).shape[0] < 3 * CFG.sample_rate
    with pytest.raises(AudioDecodeError, match="truncated"):
        load_audio(truncated, CFG.sample_rate, offset_s=5.0, duration_s=0.5)
