"""One full training step of both real towers under DDP with two gloo processes equals one process that trains on
the concatenated batch: the same global loss, the same gradients, the same parameters after Adam's step.

BatchNorm is the one layer whose output depends on how the batch is split. On GPUs training converts it to
SyncBatchNorm (``TrainConfig.sync_batchnorm``), which normalises with the global batch's statistics; PyTorch has no
SyncBatchNorm on the CPU, so here the towers run with BatchNorm in eval mode (running statistics), where the
equivalence is exact and what is tested is the rest: the sharding of the batch, the gathered loss and DDP's
averaging of gradients.
"""
from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from soundingearth_zoo import distributed
from soundingearth_zoo.losses import build_loss
from soundingearth_zoo.train import TrainConfig, build_optimizer, build_towers, epoch_batches, train_step

WORLD_SIZE = 2
GLOBAL_BATCH = 8
IMAGE_SIZE, AUDIO_SIZE = 32, 32  # small inputs: the architectures are the real ones
CFG = TrainConfig(batch_size=GLOBAL_BATCH)


def make_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(GLOBAL_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g),
        "audio": torch.randn(GLOBAL_BATCH, 1, AUDIO_SIZE, AUDIO_SIZE, generator=g),
    }


def one_step(world_size: int, rank: int) -> dict:
    """A full step (both towers, the batch triplet loss, Adam) on this rank's share of the global batch."""
    torch.manual_seed(0)
    towers = build_towers(CFG).eval()  # BatchNorm with running statistics: see the module docstring
    model = DistributedDataParallel(towers) if world_size > 1 else towers
    optimizer = build_optimizer(CFG, towers)
    rows = epoch_batches(GLOBAL_BATCH, GLOBAL_BATCH, seed=0, epoch=0, rank=rank, world_size=world_size)[0]
    batch = {name: x[rows] for name, x in make_batch().items()}
    loss = train_step(model, build_loss("batch_triplet"), optimizer, batch, torch.device("cpu"), channels_last=True)
    return {
        "rows": rows,
        "loss": loss,
        "grads": {name: p.grad.clone() for name, p in towers.named_parameters()},
        "params": {name: p.detach().clone() for name, p in towers.named_parameters()},
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    distributed.init_from_env()
    try:
        torch.save(one_step(WORLD_SIZE, rank), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_step_equals_one_process_on_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    reference = one_step(world_size=1, rank=0)

    # The ranks' shares partition the single process's batch, in rank order.
    assert [i for r in ranks for i in r["rows"]] == reference["rows"]
    for r in ranks:
        torch.testing.assert_close(r["loss"], reference["loss"], rtol=1e-5, atol=1e-6)
        assert r["grads"].keys() == reference["grads"].keys()
        for name, grad in reference["grads"].items():
            torch.testing.assert_close(r["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")
            torch.testing.assert_close(r["params"][name], reference["params"][name], rtol=1e-5, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in reference["grads"].values())
