"""Audio front end against the naive librosa path, in one run.

(a) One training sample (seek, decode 3 s, resample, log-mel, one 128-frame window: ``audio.read_random_window``)
    against the naive path (``librosa.load`` of the whole file, ``librosa.feature.melspectrogram``, then a random
    crop), on generated 44.1 kHz stereo MP3 field-recording-like soundscapes of the given lengths; samples per second
    on one core.
(b) Plain log-mel throughput (``audio.LogMel``) against librosa with the same parameters, in seconds of audio per
    second, on the CPU with ``--threads`` threads and, when CUDA is available, on the GPU (batched).

``--calibrate`` instead prints the mean and standard deviation of the log-mel values of generated soundscapes: how
``FrontendConfig.mean``/``std`` were chosen.

    python benchmarks/audio_frontend.py --minutes 3 30 --workdir /tmp/se_bench
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
from threadpoolctl import threadpool_limits

from soundingearth_zoo.audio import FrontendConfig, LogMel, load_audio, read_random_window


def soundscape(seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Mono float32 audio resembling a field recording: pink background noise, gusty low-frequency wind, a mains
    or engine hum with harmonics, and bird-like chirps, at a random overall level."""
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    freqs = np.fft.rfftfreq(n, 1 / sample_rate)
    shape = np.zeros_like(freqs)
    shape[1:] = 1 / np.sqrt(freqs[1:])  # pink: power falls as 1/f
    pink = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * shape, n)
    wind_shape = np.where(freqs < 150, shape * 8, 0)
    wind = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * wind_shape, n)
    gusts = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 6.3))
    x = pink / pink.std() + rng.uniform(0, 2) * gusts * wind / max(wind.std(), 1e-12)
    hum = rng.choice([50.0, 60.0, rng.uniform(80, 200)])
    x += rng.uniform(0, 0.5) * sum(np.sin(2 * np.pi * k * hum * t) / k for k in range(1, 6))
    for _ in range(rng.poisson(seconds * rng.uniform(0, 1.5))):  # chirps: short rising or falling sweeps
        start, length = rng.integers(0, n), round(rng.uniform(0.05, 0.3) * sample_rate)
        tc = np.arange(min(length, n - start)) / sample_rate
        f0, f1 = rng.uniform(1500, 7000, size=2)
        sweep = np.sin(2 * np.pi * (f0 * tc + (f1 - f0) * tc**2 / (2 * tc[-1] + 1e-9))) * np.hanning(tc.size)
        x[start : start + tc.size] += rng.uniform(1, 10) * sweep
    level_db = rng.uniform(-50, -20)  # RMS in dBFS
    return (x / x.std() * 10 ** (level_db / 20)).clip(-1, 1).astype(np.float32)


def write_soundscape_mp3(path: Path, minutes: float, seed: int = 0, sample_rate: int = 44100) -> Path:
    """A stereo MP3 of ``minutes``, written in one-minute blocks (kept for later runs)."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp.mp3")
    with sf.SoundFile(tmp, "w", sample_rate, 2, format="MP3") as f:
        for _ in range(math.ceil(minutes)):
            block = soundscape(60.0, sample_rate, rng)
            f.write(np.stack([block, np.roll(block, 37)], axis=1))
    tmp.rename(path)
    return path


def per_second(fn, repeats: int) -> float:
    fn()  # warm-up: imports, caches, kernels
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return repeats / (time.perf_counter() - start)


def librosa_mel(y: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """librosa's mel spectrogram with the front end's parameters (Slaney mel scale and norm are its defaults)."""
    return librosa.feature.melspectrogram(
        y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels, fmin=cfg.f_min,
        fmax=cfg.f_max, power=2.0, pad_mode="reflect",
    )


def naive_sample(path: Path, cfg: FrontendConfig, rng: np.random.Generator) -> np.ndarray:
    y, _ = librosa.load(path, sr=cfg.sample_rate, mono=True)
    mel = librosa_mel(y, cfg)
    start = rng.integers(0, max(mel.shape[1] - cfg.window_frames, 0) + 1)
    return np.log(mel[:, start : start + cfg.window_frames] + cfg.log_offset)


def bench_training_sample(args: argparse.Namespace, cfg: FrontendConfig) -> None:
    print("(a) one training sample (3 s window), samples per second on 1 core")
    torch.set_num_threads(1)
    logmel = LogMel(cfg)
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    for minutes in args.minutes:
        path = write_soundscape_mp3(args.workdir / f"soundscape_{minutes:g}min.mp3", minutes)
        naive_repeats = max(1, round(args.naive_seconds / (minutes * 0.5)))  # about 0.5 s per minute of audio
        with threadpool_limits(1):
            ours = per_second(functools.partial(read_random_window, path, cfg, generator, logmel), args.samples)
            naive = per_second(functools.partial(naive_sample, path, cfg, rng), naive_repeats)
        print(f"  {minutes:5g} min MP3: ours {ours:8.1f}/s   naive librosa {naive:8.3f}/s   ratio {ours / naive:7.0f}x")


def bench_logmel(args: argparse.Namespace, cfg: FrontendConfig) -> None:
    print("(b) log-mel throughput, seconds of audio per second (x real time), 60 s clips")
    seconds = 60.0
    wave = soundscape(seconds, cfg.sample_rate, np.random.default_rng(1))
    logmel = LogMel(cfg)
    tensor = torch.from_numpy(wave)
    for threads in args.threads:
        torch.set_num_threads(threads)
        ours = per_second(lambda: logmel(tensor), args.repeats) * seconds
        with threadpool_limits(threads):  # librosa's mel matrix product runs on BLAS threads (its FFT on one)
            naive = per_second(lambda: np.log(librosa_mel(wave, cfg) + cfg.log_offset), args.repeats) * seconds
        print(f"  CPU, {threads} threads: ours {ours:8.0f}x   librosa {naive:8.0f}x   ratio {ours / naive:5.2f}")
    if torch.cuda.is_available():
        batch = tensor.cuda().expand(args.gpu_batch, -1).contiguous()
        gpu_logmel = LogMel(cfg).cuda()

        def run() -> None:
            gpu_logmel(batch)
            torch.cuda.synchronize()

        gpu = per_second(run, args.repeats) * seconds * args.gpu_batch
        print(f"  GPU ({torch.cuda.get_device_name()}, batch {args.gpu_batch} x {seconds:g} s): ours {gpu:10.0f}x")


def calibrate(args: argparse.Namespace, cfg: FrontendConfig) -> None:
    """Mean and std of the un-normalised log-mel values over generated soundscapes plus some digital silence."""
    raw = dataclasses.replace(cfg, mean=0.0, std=1.0)
    logmel = LogMel(raw)
    rng = np.random.default_rng(args.seed)
    values = []
    for _ in range(args.clips):
        wave = soundscape(30.0, 44100, rng)
        wave[: round(rng.uniform(0, 0.1) * wave.size)] = 0.0  # recordings often start or end in digital silence
        path = args.workdir / "calibration.mp3"
        sf.write(path, wave, 44100, format="MP3")  # through the codec, as the archive's files are
        values.append(logmel(load_audio(path, cfg.sample_rate)).flatten())
    values = torch.cat(values).double()
    print(f"log-mel over {args.clips} x 30 s: mean {values.mean():.2f}  std {values.std():.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[3, 30], help="lengths of the generated MP3s")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/soundingearth_audio_bench"))
    parser.add_argument("--samples", type=int, default=50, help="training samples timed per file (ours)")
    parser.add_argument("--naive-seconds", type=float, default=10, help="rough time budget of the naive path")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--gpu-batch", type=int, default=64)
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    cfg = FrontendConfig()
    if args.calibrate:
        calibrate(args, cfg)
        return
    print(f"torch {torch.__version__}, librosa {librosa.__version__}, libsndfile {sf.__libsndfile_version__}")
    bench_training_sample(args, cfg)
    bench_logmel(args, cfg)


if __name__ == "__main__":
    main()
