"""Retrieval ranks: ``soundingearth_zoo.retrieval`` against a per-query pandas loop like the reference evaluation.

The baseline does what the authors' ``lib/evaluation.py`` does for the ranks: one row of the distance matrix per
query with ``torch.linalg.norm``, then for every query of each direction a pandas DataFrame of the distances
indexed by key, ``rank()``, and a look-up of the true partner's rank. It uses ``rank(method="max")`` rather than the
reference's average rank of ties, so that ties count against the model as in ours and the ranks can be compared
exactly. Embeddings lie on a grid of 1/8 (Gaussian values, rounded), so every way of computing a distance gives
the same float and ties occur.

Both run in one process on the CPU (ours best of 3 runs, the loop once); the script asserts identical ranks and
prints the times and their ratio, and
last, at the largest N, the time of our matrix products alone (no comparisons), which bounds ours.
With ``--baseline-queries Q`` the pandas loop is timed on the first Q queries of each direction only and its time
extrapolated linearly to all N (its distance matrix is always computed in full); the output says so.

    python benchmarks/retrieval.py --sizes 1000 3000 10000
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from soundingearth_zoo.retrieval import _distance_tiles, retrieval_metrics


def grid_embeddings(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image, audio = ((torch.randn(n, dim, generator=g) * 8).round() / 8 for _ in range(2))
    return image, audio


def reference_ranks(image: torch.Tensor, audio: torch.Tensor, num_queries: int,
                    ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The reference evaluation's loop (without its normalisation and km look-ups) for the first queries: the ranks
    of both directions, and the seconds its distance matrix and its per-query loop took."""
    start = time.perf_counter()
    keys = np.arange(len(image))
    distance_matrix = np.zeros([len(keys), len(keys)])
    for i in range(len(keys)):  # distance_matrix[sound, image], as in the reference
        distance_matrix[[i]] = torch.linalg.norm(image - audio[i].unsqueeze(0), ord=2, dim=1).numpy()
    matrix_s = time.perf_counter() - start
    image_to_audio = []
    for i_img, k_img in enumerate(keys[:num_queries]):
        df = pd.DataFrame(dict(k_snd=keys, dist=distance_matrix[:, i_img])).set_index("k_snd")
        df["rank"] = df.dist.rank(method="max")
        image_to_audio.append(df.loc[k_img, "rank"])
    audio_to_image = []
    for i_snd, k_snd in enumerate(keys[:num_queries]):
        df = pd.DataFrame(dict(k_img=keys, dist=distance_matrix[i_snd, :])).set_index("k_img")
        df["rank"] = df.dist.rank(method="max")
        audio_to_image.append(df.loc[k_snd, "rank"])
    loop_s = time.perf_counter() - start - matrix_s
    return np.array(image_to_audio, dtype=np.int64), np.array(audio_to_image, dtype=np.int64), matrix_s, loop_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000], help="numbers of pairs N")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-queries", type=int, default=0,
                        help="time the pandas loop on this many queries per direction and extrapolate (0: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, pandas {pd.__version__}, {torch.get_num_threads()} threads, dim {args.dim}")
    print(f"{'N':>7} {'ours (s)':>10} {'pandas loop (s)':>16} {'ratio':>8}  note (ours: best of 3)")
    retrieval_metrics(*grid_embeddings(256, args.dim, args.seed))  # warm-up: thread pools, first-call costs
    for n in args.sizes:
        image, audio = grid_embeddings(n, args.dim, args.seed)
        ours_s = float("inf")
        for _ in range(3):  # best of 3: a sub-second time is easily hit by other load; the loop runs for minutes
            start = time.perf_counter()
            ours = retrieval_metrics(image, audio, ks=(1, 5, 10, 100, 500, 1000))
            ours_s = min(ours_s, time.perf_counter() - start)

        queries = n if args.baseline_queries <= 0 else min(args.baseline_queries, n)
        ref_i2a, ref_a2i, matrix_s, loop_s = reference_ranks(image, audio, queries)
        baseline_s = matrix_s + loop_s * n / queries  # the matrix is always whole; the loop may be extrapolated
        note = "all queries"
        if queries < n:
            note = f"pandas loop timed on {queries} queries per direction, extrapolated linearly to {n}"
        np.testing.assert_array_equal(ours["image_to_audio"]["ranks"][:queries], ref_i2a)
        np.testing.assert_array_equal(ours["audio_to_image"]["ranks"][:queries], ref_a2i)
        print(f"{n:>7} {ours_s:>10.3f} {baseline_s:>16.2f} {baseline_s / ours_s:>7.0f}x  identical ranks "
              f"({queries} queries x 2 directions); {note}")
    # What bounds ours: the matrix products of its tiles alone, without the comparisons that count the ranks.
    n = max(args.sizes)
    image, audio = grid_embeddings(n, args.dim, args.seed)
    start = time.perf_counter()
    for _ in _distance_tiles(image, audio):
        pass
    product_s = time.perf_counter() - start
    print(f"ours' matrix products alone at N = {n} ({n} x {n} x {args.dim + 2} in tiles): {product_s:.3f} s, "
          f"{2 * n * n * (args.dim + 2) / product_s / 1e9:.0f} GFLOP/s")

if __name__ == "__main__":
    main()
