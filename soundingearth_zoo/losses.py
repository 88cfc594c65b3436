"""The paper's three pre-training objectives for a batch of matching image and audio embeddings.

Row ``i`` of ``img`` and row ``i`` of ``aud`` come from the same place (the positive pair); every other row of the
other modality is a negative. Each objective is a function of the two ``[N, d]`` tensors and an ``nn.Module``
that, under ``torch.distributed``, first gathers the embeddings of all ranks (:func:`~.distributed.gather_with_grad`)
so that the loss is that of the global batch, as in one process with all N samples. :func:`build_loss` makes the
module for a ``models.OBJECTIVES`` name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import gather_with_grad, world_size
from .errors import InputError
from .models import OBJECTIVES

__all__ = [
    "BatchTripletLoss",
    "ContrastiveLoss",
    "NaiveTripletLoss",
    "batch_triplet_loss",
    "build_loss",
    "contrastive_loss",
    "naive_triplet_loss",
    "pairwise_distances",
]

REDUCTIONS = ("sum", "mean")


def _check_pair(img: torch.Tensor, aud: torch.Tensor) -> None:
    if img.ndim != 2 or img.shape != aud.shape:
        raise ValueError(f"expected two [N, d] embeddings of one shape, got {tuple(img.shape)} and {tuple(aud.shape)}")


def pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``D[i, j] = ||a_i - b_j||`` of two ``[N, d]``/``[M, d]`` sets, as an ``[N, M]`` matrix.

    Computed from the Gram matrix (``|a|^2 + |b|^2 - 2 a.b``, clamped at 0) by ``torch.cdist``'s matrix-product
    path, so memory is O(N*M) rather than the O(N*M*d) of broadcasting ``a[:, None] - b[None]``. That path's
    backward gives coinciding points a zero (sub)gradient instead of the infinite derivative of sqrt at 0. Forced
    for every size, since cdist's default switches to a direct kernel for small sets whose CPU backward allocates
    the N x M x d buffer.
    """
    return torch.cdist(a, b, compute_mode="use_mm_for_euclid_dist")


def batch_triplet_loss(
    img: torch.Tensor, aud: torch.Tensor, margin: float = 1.0, reduction: str = "sum"
) -> torch.Tensor:
    """Batch triplet loss, Eq. (3) of the paper.

    With ``D[i, j] = ||img_i - aud_j||``, the hinge ``max(0, D_ii - D_ij + margin)`` over every off-diagonal entry
    of each row (image anchors) plus ``max(0, D_jj - D_ij + margin)`` over every off-diagonal entry of each column
    (audio anchors). ``reduction="sum"`` adds them all, as Algorithm 1 (which also counts the diagonal, a constant
    ``2 N margin`` without gradient, left out here). ``"mean"`` averages each direction over its N(N-1) triplets and
    halves their sum, as the authors' released code (which averaged over all N^2 entries, diagonal included: its
    gradient is (N-1)/N of this one). A batch of one has no negatives and gives 0.
    """
    _check_pair(img, aud)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    distance = pairwise_distances(img, aud)
    positive = distance.diagonal()
    slack = margin - distance
    hinge = F.relu(slack + positive[:, None]) + F.relu(slack + positive[None, :])  # image anchors + audio anchors
    # The diagonal pairs each anchor with its own positive: exactly 2 max(margin, 0) and no gradient. Subtracting
    # it costs less than masking the N x N matrix.
    total = hinge.sum() - hinge.diagonal().sum()
    if reduction == "sum":
        return total
    n = len(distance)
    return total / (2 * max(n * (n - 1), 1))


def naive_triplet_loss(img: torch.Tensor, aud: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Naive triplet loss, Eq. (2) of the paper: one negative per anchor, the other modality's batch rolled by one.

    Both modalities serve as anchors, as in the batch loss, so the two objectives differ only in how many negatives
    each anchor sees: ``max(0, ||img_i - aud_i|| - ||img_i - aud_{i-1}|| + margin)`` and its mirror with ``aud``
    as anchor, each averaged over the batch, the two halved and added. The distances are torch's
    ``triplet_margin_loss``'s, whose 1e-6 inside the norm keeps the gradient finite where a pair coincides. In a
    batch of one the negative is the positive itself: a constant ``margin`` without gradient.
    """
    _check_pair(img, aud)
    image_anchor = F.triplet_margin_loss(img, aud, aud.roll(1, dims=0), margin=margin)
    audio_anchor = F.triplet_margin_loss(aud, img, img.roll(1, dims=0), margin=margin)
    return 0.5 * (image_anchor + audio_anchor)


def contrastive_loss(img: torch.Tensor, aud: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Symmetric InfoNCE (as in CLIP) on L2-normalised embeddings: the mean of the image-to-audio and the
    audio-to-image cross-entropies of the cosine-similarity logits divided by ``temperature``.

    The default temperature 0.2 is the one of the contrastive losses in the authors' released code (``ContrastiveLoss``,
    ``SymmetricCL``), the paper's ablation baseline (Table VII). It stays fixed, as there, rather than learnt as in
    CLIP: a learnt one would be a parameter outside both towers that checkpoints and exported weights do not carry.
    (The released ``SymmetricCL`` sums the two directions, twice this value.)
    """
    _check_pair(img, aud)
    logits = F.normalize(img, dim=1) @ F.normalize(aud, dim=1).T / temperature
    targets = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


class _GlobalBatchLoss(nn.Module):
    """Base of the loss modules: ``forward(img_emb, aud_emb)`` gathers all ranks' rows (``gather=True`` and a
    process group up) and evaluates the loss of the global batch.

    Every rank then computes the same global loss; the gather's backward hands each rank ``world_size`` times the
    gradient of its own rows, which DDP's averaging over ranks cancels exactly. Use the value as is: no rescaling.
    """

    def __init__(self, gather: bool = True) -> None:
        super().__init__()
        self.gather = gather

    def forward(self, img_emb: torch.Tensor, aud_emb: torch.Tensor) -> torch.Tensor:
        _check_pair(img_emb, aud_emb)
        if self.gather and world_size() > 1:
            # One collective for both modalities.
            img_emb, aud_emb = gather_with_grad(torch.cat((img_emb, aud_emb), dim=1)).chunk(2, dim=1)
        return self.loss(img_emb, aud_emb)

    def loss(self, img: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BatchTripletLoss(_GlobalBatchLoss):
    """:func:`batch_triplet_loss` over the global batch; the paper's objective."""

    def __init__(self, margin: float = 1.0, reduction: str = "sum", gather: bool = True) -> None:
        super().__init__(gather)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.margin = margin
        self.reduction = reduction

    def loss(self, img: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        return batch_triplet_loss(img, aud, self.margin, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}, gather={self.gather}"


class NaiveTripletLoss(_GlobalBatchLoss):
    """:func:`naive_triplet_loss` over the global batch (the negatives are rolled across rank boundaries)."""

    def __init__(self, margin: float = 1.0, gather: bool = True) -> None:
        super().__init__(gather)
        self.margin = margin

    def loss(self, img: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        return naive_triplet_loss(img, aud, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, gather={self.gather}"


class ContrastiveLoss(_GlobalBatchLoss):
    """:func:`contrastive_loss` over the global batch."""

    def __init__(self, temperature: float = 0.2, gather: bool = True) -> None:
        super().__init__(gather)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def loss(self, img: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(img, aud, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather={self.gather}"


_LOSSES: dict[str, type[_GlobalBatchLoss]] = {
    "batch_triplet": BatchTripletLoss,
    "contrastive": ContrastiveLoss,
    "naive_triplet": NaiveTripletLoss,
}


def build_loss(objective: str, **kwargs) -> nn.Module:
    """The loss module of one pre-training objective (``models.OBJECTIVES``), e.g.
    ``build_loss("batch_triplet", reduction="mean")``; keyword arguments go to its constructor."""
    if objective not in _LOSSES:
        raise InputError(f"unknown objective {objective!r}; choose one of {list(OBJECTIVES)}")
    return _LOSSES[objective](**kwargs)
