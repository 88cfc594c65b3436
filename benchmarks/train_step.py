"""One full training step (both towers forward and backward, the loss, Adam) in fp32 against bf16 autocast with
channels_last (and, with ``--compile``, torch.compile), in one run.

The step is ``train.train_step``, the one training runs, on random inputs at the paper's sizes and batch 256: the
stored 512 px uint8 crops with drawn augmentations, which the step augments on the device to 192 px as training
does, and 1x128x128 log-mel windows. ``--batch-size`` and ``--image-size``/``--audio-size`` make it fit a CPU.
Prints samples per second of each setting, side by side, with the ratio, and the peak GPU memory on CUDA.

    python benchmarks/train_step.py                          # GPU: batch 256 at the paper's sizes
    python benchmarks/train_step.py --batch-size 16 --steps 3 --warmup 1   # CPU
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from soundingearth_zoo.augment import IMAGE_SIZE, train_augment
from soundingearth_zoo.losses import build_loss
from soundingearth_zoo.train import TrainConfig, build_optimizer, build_towers, train_step


def measure(args: argparse.Namespace, device: torch.device, bf16: bool, channels_last: bool, compile: bool) -> dict:
    """Samples per second of ``args.steps`` timed steps after ``args.warmup`` untimed ones."""
    torch.manual_seed(0)
    cfg = TrainConfig(image_model=args.image_model, objective=args.objective, batch_size=args.batch_size)
    towers = build_towers(cfg).to(device)
    if channels_last:
        towers.to(memory_format=torch.channels_last)
    model = torch.compile(towers) if compile else towers
    optimizer = build_optimizer(cfg, towers)
    loss_fn = build_loss(cfg.objective)
    g = torch.Generator().manual_seed(0)
    stored = round(args.image_size * 512 / IMAGE_SIZE)  # prepare's crop for the paper's 192 px inputs: 512 px
    augment = train_augment(size=args.image_size)
    images = torch.randint(0, 256, (args.batch_size, 3, stored, stored), dtype=torch.uint8, generator=g)
    batch = {
        "image": images.pin_memory() if device.type == "cuda" else images,
        "augment": torch.stack([augment.draw(image) for image in images]),
        "audio": torch.randn(args.batch_size, 1, args.audio_size, args.audio_size, generator=g),
    }
    dtype = torch.bfloat16 if bf16 else None

    def run(steps: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            loss = train_step(model, loss_fn, optimizer, batch, device, dtype, channels_last, augment)
        float(loss)  # waits for the last step
        return time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run(args.warmup)
    seconds = run(args.steps)
    result = {"samples_per_s": args.steps * args.batch_size / seconds, "step_s": seconds / args.steps}
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-model", default="soundingearth_resnet18")
    parser.add_argument("--objective", default="batch_triplet")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--audio-size", type=int, default=128, help="mel bands = frames of the audio window")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the towers in the fast setting")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
    else:
        card = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(
        f"{args.image_model} + audio resnet18, {args.objective}, batch {args.batch_size}, images {args.image_size} px, "
        f"audio 1x{args.audio_size}x{args.audio_size}, {args.steps} timed steps after {args.warmup}; "
        f"{card}, torch {torch.__version__}"
    )
    fast_name = "bf16 + channels_last" + (" + compile" if args.compile else "")
    baseline = measure(args, device, bf16=False, channels_last=False, compile=False)
    fast = measure(args, device, bf16=True, channels_last=True, compile=args.compile)
    print(f"{'setting':<34}{'samples/s':>12}{'s/step':>10}{'peak GiB':>10}")
    for name, result in (("fp32", baseline), (fast_name, fast)):
        peak = f"{result['peak_gib']:.2f}" if "peak_gib" in result else "-"
        print(f"{name:<34}{result['samples_per_s']:>12.1f}{result['step_s']:>10.3f}{peak:>10}")
    print(f"speed-up of {fast_name} over fp32: {fast['samples_per_s'] / baseline['samples_per_s']:.2f}x")


if __name__ == "__main__":
    main()
