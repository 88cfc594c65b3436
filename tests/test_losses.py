"""The three objectives against plain formulations written out here: per-pair loops and the broadcast form of the
paper's Algorithm 1, in float64, for values and autograd gradients; coinciding embeddings; batches of one and two."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from soundingearth_zoo.errors import InputError
from soundingearth_zoo.losses import (
    BatchTripletLoss,
    ContrastiveLoss,
    NaiveTripletLoss,
    batch_triplet_loss,
    build_loss,
    contrastive_loss,
    naive_triplet_loss,
    pairwise_distances,
)
from soundingearth_zoo.models import OBJECTIVES

MARGIN = 1.0


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x)


def loop_batch_triplet(img, aud, margin=MARGIN, reduction="sum"):
    """Eq. (3) term by term: every off-diagonal entry of every row (image anchor) and every column (audio anchor)."""
    n = len(img)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    rows = [F.relu(_norm(img[i] - aud[i]) - _norm(img[i] - aud[j]) + margin) for i, j in pairs]  # image anchor i
    cols = [F.relu(_norm(img[j] - aud[j]) - _norm(img[i] - aud[j]) + margin) for i, j in pairs]  # audio anchor j
    if not rows:  # no negatives
        return (img.sum() + aud.sum()) * 0
    rows, cols = torch.stack(rows), torch.stack(cols)
    if reduction == "sum":
        return rows.sum() + cols.sum()
    return 0.5 * (rows.mean() + cols.mean())


def algorithm1(v, a):
    """The paper's Algorithm 1 as printed (broadcast N x N x d difference; its sums include the diagonal)."""
    diff = v.unsqueeze(1) - a.unsqueeze(0)
    dist = torch.linalg.vector_norm(diff, dim=2)
    d_true = dist.diagonal()
    return F.relu(d_true.unsqueeze(0) - dist + 1.0).sum() + F.relu(d_true.unsqueeze(1) - dist + 1.0).sum()


def released_code_mean(img, aud):
    """The authors' released TripletLoss: the mean over all N^2 entries per direction, halved sum."""
    dist = torch.linalg.vector_norm(img[:, None] - aud[None], dim=-1)
    d_true = dist.diagonal()
    return 0.5 * (F.relu(d_true[None] - dist + 1.0).mean() + F.relu(d_true[:, None] - dist + 1.0).mean())


def loop_naive_triplet(img, aud, margin=MARGIN):
    """Eq. (2) per anchor, the negative being the previous row of the other modality, both modalities as anchors."""
    n = len(img)
    rows = [F.relu(_norm(img[i] - aud[i]) - _norm(img[i] - aud[i - 1]) + margin) for i in range(n)]
    cols = [F.relu(_norm(aud[i] - img[i]) - _norm(aud[i] - img[i - 1]) + margin) for i in range(n)]
    return 0.5 * (torch.stack(rows).mean() + torch.stack(cols).mean())


def loop_contrastive(img, aud, temperature):
    """InfoNCE per anchor from cosine similarities, both directions, mean of the two."""
    n = len(img)
    sim = torch.stack([torch.stack([F.cosine_similarity(img[i], aud[j], dim=0) for j in range(n)]) for i in range(n)])
    logits = sim / temperature
    i2a = [-(logits[i, i] - torch.logsumexp(logits[i, :], 0)) for i in range(n)]
    a2i = [-(logits[j, j] - torch.logsumexp(logits[:, j], 0)) for j in range(n)]
    return 0.5 * (torch.stack(i2a).mean() + torch.stack(a2i).mean())


CASES = {
    "batch_triplet_sum": (lambda i, a: batch_triplet_loss(i, a), lambda i, a: loop_batch_triplet(i, a)),
    "batch_triplet_mean": (
        lambda i, a: batch_triplet_loss(i, a, reduction="mean"),
        lambda i, a: loop_batch_triplet(i, a, reduction="mean"),
    ),
    "batch_triplet_margin": (
        lambda i, a: batch_triplet_loss(i, a, margin=0.3),
        lambda i, a: loop_batch_triplet(i, a, margin=0.3),
    ),
    "naive_triplet": (naive_triplet_loss, loop_naive_triplet),
    "contrastive": (lambda i, a: contrastive_loss(i, a, 0.2), lambda i, a: loop_contrastive(i, a, 0.2)),
    "contrastive_t0.07": (lambda i, a: contrastive_loss(i, a, 0.07), lambda i, a: loop_contrastive(i, a, 0.07)),
}


def embeddings(n: int, d: int = 5, seed: int = 0, dtype=torch.float64):
    """Matching pairs a little closer than random ones, so that some hinges are active and some are not."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, d, generator=g, dtype=dtype)
    aud = img + 0.9 * torch.randn(n, d, generator=g, dtype=dtype)
    return img, aud


def value_and_grads(fn, img, aud):
    img, aud = img.clone().requires_grad_(), aud.clone().requires_grad_()
    loss = fn(img, aud)
    return (loss.detach(), *torch.autograd.grad(loss, (img, aud)))


@pytest.mark.parametrize("n", [1, 2, 7])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_values_and_gradients(case, n):
    ours, reference = CASES[case]
    img, aud = embeddings(n)
    for got, want in zip(value_and_grads(ours, img, aud), value_and_grads(reference, img, aud)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_reference_batch_has_active_and_inactive_hinges():
    """Otherwise the comparison above would not exercise the hinge."""
    img, aud = embeddings(7)
    dist = pairwise_distances(img, aud)
    margins = (dist.diagonal()[:, None] - dist + MARGIN)[~torch.eye(7, dtype=torch.bool)]
    assert (margins > 0).any() and (margins < 0).any()


def test_sum_is_algorithm1_without_its_constant_diagonal():
    img, aud = embeddings(9, d=16)
    ours = value_and_grads(batch_triplet_loss, img, aud)
    paper = value_and_grads(algorithm1, img, aud)
    torch.testing.assert_close(ours[0], paper[0] - 2 * 9 * MARGIN)
    for got, want in zip(ours[1:], paper[1:]):
        torch.testing.assert_close(got, want)


def test_mean_is_released_code_rescaled():
    """Released code: (S + 2 N margin) / (2 N^2) with S the off-diagonal sum; ours: S / (2 N (N - 1))."""
    n = 9
    img, aud = embeddings(n, d=16)
    ours = value_and_grads(lambda i, a: batch_triplet_loss(i, a, reduction="mean"), img, aud)
    released = value_and_grads(released_code_mean, img, aud)
    scale = n / (n - 1)
    torch.testing.assert_close(ours[0], (released[0] - MARGIN / n) * scale)
    for got, want in zip(ours[1:], released[1:]):
        torch.testing.assert_close(got, want * scale)


def coinciding(kind: str, n: int = 6, d: int = 8):
    img, aud = embeddings(n, d, dtype=torch.float32)
    if kind == "all_equal":
        img, aud = img[:1].repeat(n, 1), img[:1].repeat(n, 1)
    elif kind == "positive_pair":
        aud[2] = img[2]
    elif kind == "negative_pair":
        aud[3] = img[1]
    elif kind == "zeros":
        img, aud = torch.zeros(n, d), torch.zeros(n, d)
    return img, aud


@pytest.mark.parametrize("kind", ["all_equal", "positive_pair", "negative_pair", "zeros"])
@pytest.mark.parametrize("case", list(CASES))
def test_coinciding_embeddings_give_finite_values_and_gradients(case, kind):
    ours, reference = CASES[case]
    img, aud = coinciding(kind)
    value, *grads = value_and_grads(ours, img, aud)
    assert value.isfinite() and all(g.isfinite().all() for g in grads)
    torch.testing.assert_close(value, reference(img.double(), aud.double()).float(), rtol=1e-4, atol=1e-4)


def test_coinciding_triplet_gradient_is_the_reference_subgradient():
    """Where a pair coincides the distance has no gradient; both formulations take the zero subgradient."""
    img, aud = coinciding("positive_pair")
    img, aud = img.double(), aud.double()
    for got, want in zip(value_and_grads(batch_triplet_loss, img, aud), value_and_grads(loop_batch_triplet, img, aud)):
        torch.testing.assert_close(got, want)


def test_single_pair_batches():
    img, aud = embeddings(1)
    assert batch_triplet_loss(img, aud) == 0 and batch_triplet_loss(img, aud, reduction="mean") == 0
    assert naive_triplet_loss(img, aud) == pytest.approx(MARGIN)
    assert contrastive_loss(img, aud) == pytest.approx(0.0, abs=1e-12)


def _max_op_input_numel(fn, *args) -> int:
    """Largest tensor any op (forward or autograd backward) received while computing fn and its gradient."""
    args = [a.clone().requires_grad_() for a in args]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        fn(*args).backward()
    return max(
        (torch.Size(shape).numel() for event in prof.events() for shape in event.input_shapes if shape),
        default=0,
    )


def test_batch_triplet_never_builds_the_n_n_d_difference():
    n, d = 48, 32
    img, aud = embeddings(n, d, dtype=torch.float32)
    assert _max_op_input_numel(algorithm1, img, aud) >= n * n * d  # the probe sees the broadcast tensor
    assert _max_op_input_numel(batch_triplet_loss, img, aud) <= n * n
    assert _max_op_input_numel(lambda i, a: batch_triplet_loss(i, a, reduction="mean"), img, aud) <= n * n


def test_modules_match_functions_and_build_loss():
    img, aud = embeddings(5)
    expected = {
        "batch_triplet": (BatchTripletLoss, batch_triplet_loss(img, aud)),
        "contrastive": (ContrastiveLoss, contrastive_loss(img, aud)),
        "naive_triplet": (NaiveTripletLoss, naive_triplet_loss(img, aud)),
    }
    assert set(expected) == set(OBJECTIVES)
    for objective, (cls, value) in expected.items():
        module = build_loss(objective)
        assert type(module) is cls
        torch.testing.assert_close(module(img, aud), value)
    module = build_loss("batch_triplet", reduction="mean", margin=0.5)
    torch.testing.assert_close(module(img, aud), batch_triplet_loss(img, aud, margin=0.5, reduction="mean"))
    assert "reduction='mean'" in repr(module)


def test_bad_arguments():
    img, aud = embeddings(4)
    with pytest.raises(InputError, match="batch_triplet"):
        build_loss("triplet")
    with pytest.raises(ValueError, match="reduction"):
        build_loss("batch_triplet", reduction="max")
    with pytest.raises(ValueError, match="temperature"):
        build_loss("contrastive", temperature=0.0)
    with pytest.raises(ValueError, match="shape"):
        batch_triplet_loss(img, aud[:3])
    with pytest.raises(ValueError, match="shape"):
        build_loss("contrastive")(img, aud[:, :3])
