"""Batch triplet loss: ours (``losses.batch_triplet_loss``, distances from the Gram matrix) against the paper's
Algorithm 1 as printed (it broadcasts the N x N x d difference tensor), forward and backward, in one run.

Each (method, N) runs in a fresh subprocess, so that its peak memory is its own: on the CPU the growth of the
process's peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which does see torch's allocations,
unlike tracemalloc) over its value just before the first full-size step (after a warm-up on 8 rows that starts
autograd's threads); on CUDA ``torch.cuda.max_memory_allocated`` over the memory held before it. Time is the
fastest of ``--repeats`` steps after that first one (the least disturbed by other work on the machine). The two values must
agree (Algorithm 1 also sums the diagonal, a constant 2 N margin) and so must their gradients.

    python benchmarks/loss.py --sizes 512 1024 2048 --dim 128
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from soundingearth_zoo.losses import batch_triplet_loss

MARGIN = 1.0


def algorithm1(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 of the paper, line by line."""
    diff = v.unsqueeze(1) - a.unsqueeze(0)  # pairwise diff's
    D = torch.linalg.vector_norm(diff, dim=2)  # distance matrix
    D_true = D.diagonal()  # distances of the true pairings
    d_col = F.relu(D_true.unsqueeze(0) - D + MARGIN).sum()
    d_row = F.relu(D_true.unsqueeze(1) - D + MARGIN).sum()
    return d_col + d_row


METHODS = {"ours": batch_triplet_loss, "algorithm1": algorithm1}


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_case(method: str, n: int, dim: int, repeats: int, device: torch.device, grads_path: str) -> dict:
    """One method at one size, in this (fresh) process: peak memory of the first step, then timed steps."""
    g = torch.Generator().manual_seed(0)
    img = torch.randn(n, dim, generator=g).to(device).requires_grad_()
    aud = (img.detach() + 0.5 * torch.randn(n, dim, generator=g).to(device)).requires_grad_()
    loss_fn = METHODS[method]

    def step() -> torch.Tensor:
        img.grad = aud.grad = None
        loss = loss_fn(img, aud)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return loss

    # Start autograd's and the kernels' lazily created machinery on a tiny batch, so it is not counted as the peak.
    loss_fn(img[:8].detach().requires_grad_(), aud[:8].detach()).backward()
    before = _peak_bytes(device) if device.type == "cpu" else torch.cuda.memory_allocated(device)
    loss = step()
    peak = _peak_bytes(device) - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    torch.save({"img": img.grad.cpu(), "aud": aud.grad.cpu()}, grads_path)
    return {"loss": loss.item(), "seconds": min(times), "peak_bytes": peak}


def spawn_case(method: str, n: int, args: argparse.Namespace, grads_path: str) -> dict:
    cmd = [sys.executable, __file__, "--case", method, "--sizes", str(n), "--dim", str(args.dim)]
    cmd += ["--repeats", str(args.repeats), "--device", args.device, "--grads", grads_path]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048], help="batch sizes N")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension d")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after the first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--case", choices=list(METHODS), help=argparse.SUPPRESS)  # internal: one subprocess
    parser.add_argument("--grads", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        result = run_case(args.case, args.sizes[0], args.dim, args.repeats, torch.device(args.device), args.grads)
        print(json.dumps(result))
        return

    print(
        f"batch triplet loss, forward + backward, d = {args.dim}, device {args.device}, "
        f"{args.threads or torch.get_num_threads()} threads, best of {args.repeats} steps"
    )
    print(f"{'N':>6} {'ours s':>9} {'alg.1 s':>9} {'speed-up':>9} {'ours MiB':>9} {'alg.1 MiB':>10} {'mem. ratio':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            res = {m: spawn_case(m, n, args, str(Path(tmp) / f"{m}{n}.pt")) for m in METHODS}
            # Equal values and gradients; Algorithm 1's sums include the N diagonal entries of each direction.
            torch.testing.assert_close(
                torch.tensor(res["ours"]["loss"], dtype=torch.float64),
                torch.tensor(res["algorithm1"]["loss"] - 2 * n * MARGIN, dtype=torch.float64),
                rtol=1e-4,
                atol=1e-3,
            )
            grads = {m: torch.load(Path(tmp) / f"{m}{n}.pt") for m in METHODS}
            for key in ("img", "aud"):
                torch.testing.assert_close(grads["ours"][key], grads["algorithm1"][key], rtol=1e-4, atol=1e-4)
            ours, alg1 = res["ours"], res["algorithm1"]
            mib = 2**20
            print(
                f"{n:>6} {ours['seconds']:>9.4f} {alg1['seconds']:>9.4f} {alg1['seconds'] / ours['seconds']:>8.1f}x "
                f"{ours['peak_bytes'] / mib:>9.1f} {alg1['peak_bytes'] / mib:>10.1f} "
                f"{alg1['peak_bytes'] / max(ours['peak_bytes'], 1):>9.1f}x"
            )
    print("values and gradients agree (loss: ours = Algorithm 1 - 2 N margin)")


if __name__ == "__main__":
    main()
