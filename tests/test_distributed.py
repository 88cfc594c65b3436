"""Two real gloo processes, each with part of a batch, against one process with the whole batch.

One spawn serves the module: every worker joins through ``init_from_env`` (torchrun's variables), runs all the
cases, and saves what it saw; the tests compare that with single-process references computed here.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from soundingearth_zoo import distributed
from soundingearth_zoo.losses import build_loss

WORLD_SIZE = 2
BATCH, IN_DIM, EMBED_DIM = 8, 6, 5
# Rows of the global batch held by each rank: halves, and an uneven split (the end of an epoch).
SPLITS = {"even": (4, 4), "uneven": (3, 5)}
LOSSES = {
    "batch_triplet": {},
    "batch_triplet_mean": {"reduction": "mean"},
    "naive_triplet": {},
    "contrastive": {},
}


class TwoTowers(nn.Module):
    """Stand-in for the image and audio towers: one linear map each."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(IN_DIM, EMBED_DIM)
        self.audio = nn.Linear(IN_DIM, EMBED_DIM)

    def forward(self, x_img: torch.Tensor, x_aud: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(x_img), self.audio(x_aud)


def make_loss(case: str) -> nn.Module:
    return build_loss(case.removesuffix("_mean"), **LOSSES[case])


def make_inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return {
        "img": torch.randn(BATCH, EMBED_DIM, generator=g, dtype=torch.float64),
        "aud": torch.randn(BATCH, EMBED_DIM, generator=g, dtype=torch.float64),
        "x_img": torch.randn(BATCH, IN_DIM, generator=g),
        "x_aud": torch.randn(BATCH, IN_DIM, generator=g),
        "state": TwoTowers().state_dict(),
    }


def rows_of(rank: int, split: str) -> slice:
    sizes = SPLITS[split]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def embedding_step(loss_fn: nn.Module, img: torch.Tensor, aud: torch.Tensor) -> dict:
    img, aud = img.clone().requires_grad_(), aud.clone().requires_grad_()
    loss = loss_fn(img, aud)
    loss.backward()
    return {"loss": loss.detach(), "img_grad": img.grad, "aud_grad": aud.grad}


def ddp_step(loss_fn: nn.Module, model: nn.Module, x_img: torch.Tensor, x_aud: torch.Tensor) -> dict:
    loss = loss_fn(*model(x_img, x_aud))
    loss.backward()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    return {"loss": loss.detach(), "grads": {name: p.grad.clone() for name, p in module.named_parameters()}}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    device = distributed.init_from_env()
    inputs = torch.load(os.path.join(out_dir, "inputs.pt"))
    seen = {
        "device": str(device),
        "rank": distributed.rank(),
        "world_size": distributed.world_size(),
        "backend": dist.get_backend(),
        "gathered": {s: distributed.gather_with_grad(inputs["img"][rows_of(rank, s)]) for s in SPLITS},
    }
    for split in SPLITS:
        rows = rows_of(rank, split)
        for case in LOSSES:
            seen[split, case, "embeddings"] = embedding_step(make_loss(case), inputs["img"][rows], inputs["aud"][rows])
            model = TwoTowers()
            model.load_state_dict(inputs["state"])
            seen[split, case, "ddp"] = ddp_step(
                make_loss(case), DistributedDataParallel(model), inputs["x_img"][rows], inputs["x_aud"][rows]
            )
    torch.save(seen, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def inputs() -> dict:
    return make_inputs()


@pytest.fixture(scope="module")
def ranks(inputs, tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("gloo")
    torch.save(inputs, out_dir / "inputs.pt")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


@pytest.mark.slow
def test_workers_join_from_torchrun_env(ranks, inputs):
    assert [seen["rank"] for seen in ranks] == [0, 1]
    assert all(seen["world_size"] == WORLD_SIZE and seen["backend"] == "gloo" for seen in ranks)
    assert all(seen["device"] == "cpu" for seen in ranks)
    for split in SPLITS:  # every rank holds the whole batch, in rank order
        for seen in ranks:
            torch.testing.assert_close(seen["gathered"][split], inputs["img"], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("case", list(LOSSES))
def test_embedding_gradients_match_one_process(ranks, inputs, case, split):
    """Same loss on every rank; each rank's rows get world_size x the one-process gradient (DDP divides it back)."""
    expected = embedding_step(make_loss(case), inputs["img"], inputs["aud"])
    for r, seen in enumerate(ranks):
        got = seen[split, case, "embeddings"]
        torch.testing.assert_close(got["loss"], expected["loss"])
        for key in ("img_grad", "aud_grad"):
            torch.testing.assert_close(got[key], WORLD_SIZE * expected[key][rows_of(r, split)])


@pytest.mark.slow
@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("case", list(LOSSES))
def test_ddp_parameter_gradients_match_one_process(ranks, inputs, case, split):
    model = TwoTowers()
    model.load_state_dict(inputs["state"])
    expected = ddp_step(make_loss(case), model, inputs["x_img"], inputs["x_aud"])
    assert any(g.abs().sum() > 0 for g in expected["grads"].values())
    for seen in ranks:
        got = seen[split, case, "ddp"]
        torch.testing.assert_close(got["loss"], expected["loss"])
        assert got["grads"].keys() == expected["grads"].keys()
        for name, grad in expected["grads"].items():
            torch.testing.assert_close(got["grads"][name], grad, msg=f"{case} {split}: gradient of {name}")


def test_without_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert distributed.init_from_env() == expected
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (0, 1, 0)
    x = torch.randn(3, 2)
    assert distributed.gather_with_grad(x) is x
