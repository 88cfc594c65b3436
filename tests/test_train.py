"""Training on a small prepared demo archive: a run killed after a checkpoint and resumed ends with exactly the
parameters of a run never interrupted; checkpoints load with ``weights_only=True`` and hold what resuming needs."""
from __future__ import annotations

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

from soundingearth_zoo.audio import FrontendConfig
from soundingearth_zoo.checkpoint import load_checkpoint
from soundingearth_zoo.demo_data import make_demo_archive
from soundingearth_zoo.errors import InputError
from soundingearth_zoo.prepare import prepare_archive
from soundingearth_zoo.train import TrainConfig, latest_checkpoint, load_config, train

# Tiny inputs keep a step cheap; the towers are the real architectures.
FRONTEND = FrontendConfig(n_mels=32, window_frames=32)
# 40 items: 28 train, so batch 8 gives 3 steps an epoch; checkpoints every 2 steps fall inside epochs.
STEPS_PER_EPOCH, EPOCHS = 3, 2


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_data")
    make_demo_archive(root / "archive", num_items=40, seed=0, image_size=96, seconds=1.5)
    prepare_archive(root / "archive", root / "prepared", FRONTEND, workers=0, crop_size=48)
    return root / "prepared"


def config(prepared: Path, out: Path, **overrides) -> TrainConfig:
    cfg = TrainConfig(data=str(prepared), out=str(out), image_size=32, batch_size=8, epochs=EPOCHS, workers=0,
                      checkpoint_every=2, log_every=2, channels_last=False, seed=1)
    return dataclasses.replace(cfg, **overrides)


def read_log(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_killed_and_resumed_run_ends_where_an_uninterrupted_one_does(prepared, tmp_path):
    total = EPOCHS * STEPS_PER_EPOCH
    # The interrupted run: a separate process (with a loader worker, which must not change the samples),
    # SIGKILLed as soon as its first checkpoint (step 2) is on disk.
    interrupted = config(prepared, tmp_path / "interrupted", workers=1)
    interrupted.save(tmp_path / "interrupted.yaml")
    command = [sys.executable, "-m", "soundingearth_zoo.cli", "train", "--config", str(tmp_path / "interrupted.yaml")]
    # Its own session, so the kill takes its loader worker too.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while latest_checkpoint(interrupted.out) is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    _, stderr = process.communicate()
    killed_at = load_checkpoint(latest_checkpoint(interrupted.out))["step"]
    assert 2 <= killed_at < total, stderr.decode()[-2000:]
    with pytest.raises(InputError, match="--resume"):
        train(interrupted)  # a fresh run never overwrites one in progress

    final = train(interrupted, resume=True)
    resumed = torch.load(final, weights_only=True)  # plain tensors and values only
    uninterrupted = load_checkpoint(train(config(prepared, tmp_path / "uninterrupted", checkpoint_every=100)))

    assert resumed["step"] == uninterrupted["step"] == total
    for key in ("image_state_dict", "audio_state_dict"):
        assert resumed[key].keys() == uninterrupted[key].keys()
        for name, value in uninterrupted[key].items():
            assert torch.equal(resumed[key][name], value), f"{key}[{name}] differs after resuming at {killed_at}"
    for state, reference in zip(resumed["optimizer"]["state"].values(), uninterrupted["optimizer"]["state"].values()):
        assert torch.equal(state["exp_avg_sq"], reference["exp_avg_sq"])
    # The logs read as those of one run: every step logged once, with the same losses.
    logs = [read_log(Path(run) / "train_log.csv") for run in (interrupted.out, tmp_path / "uninterrupted")]
    assert [row["step"] for row in logs[0]] == [str(s) for s in range(2, total + 1, 2)]
    assert [row["loss"] for row in logs[0]] == [row["loss"] for row in logs[1]]
    assert len(read_log(Path(interrupted.out) / "val_log.csv")) == EPOCHS

    # What the run left: the newest keep_checkpoints checkpoints and no temporary file, the config with the
    # front end the data was prepared with, TensorBoard events.
    assert sorted(p.name for p in final.parent.iterdir()) == ["step-00000004.pt", "step-00000006.pt"]
    assert resumed["frontend"] == FRONTEND.to_dict() and resumed["config"]["image_model"] == "soundingearth_resnet18"
    assert resumed["image_state_dict"].keys() == timm.create_model("soundingearth_resnet18").state_dict().keys()
    assert resumed["rng"]["torch"].dtype == torch.uint8
    saved = load_config(Path(interrupted.out) / "config.yaml")
    assert saved == dataclasses.replace(interrupted, frontend=FRONTEND.to_dict())
    assert os.listdir(Path(interrupted.out) / "tensorboard")


def test_data_prepared_with_another_front_end_is_refused(prepared, tmp_path):
    cfg = config(prepared, tmp_path / "run", frontend={"n_mels": 128})
    with pytest.raises(InputError, match="differs from the one"):
        train(cfg)
