"""Shared by the export and conversion tests: weights that make every tensor matter, and a fresh interpreter that
loads exported folders with plain timm."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

# Runs in a new interpreter: loads each folder with ``timm.create_model("local-dir:...", pretrained=True)`` and
# compares its output with the saved one. ``soundingearth_zoo`` is imported only when a job asks for it.
_FRESH_LOAD = r"""
import json, sys
import timm, torch
results = []
for job in json.loads(sys.argv[1]):
    if job["import_package"]:
        import soundingearth_zoo
    try:
        model = timm.create_model("local-dir:" + job["folder"], pretrained=True).eval()
    except Exception as err:
        results.append({"error": f"{type(err).__name__}: {err}"})
        continue
    io = torch.load(job["io"], weights_only=True)
    with torch.no_grad():
        diff = (model(io["x"]) - io["y"]).abs().max().item()
    results.append({
        "max_abs_diff": diff,
        "class": type(model).__name__,
        "package_imported": "soundingearth_zoo" in sys.modules,
        "hf_hub_id": model.pretrained_cfg.get("hf_hub_id"),
    })
print(json.dumps(results))
"""


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters (fresh ones are close to the identity, and timm zeroes the
    last one of each block), so that every tensor shapes the output; convolutions keep their random init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * 0.4 + 0.1)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def save_io(model: nn.Module, path: Path, input_shape: tuple[int, ...], seed: int = 1) -> Path:
    """Save a random input and ``model``'s output for it, for a fresh interpreter to compare against."""
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.save({"x": x, "y": model.eval()(x)}, path)
    return path


def load_in_fresh_interpreter(jobs: list[dict]) -> list[dict]:
    """Run ``_FRESH_LOAD`` in a new Python process; ``jobs``: dicts with ``folder``, ``io``, ``import_package``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_LOAD, json.dumps(jobs)],
        capture_output=True, text=True, env=env, timeout=240, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sha256_sums(folder: Path) -> dict[str, str]:
    """``name -> sha256`` of the files in ``folder`` except SHA256SUMS, computed here with hashlib."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.name != "SHA256SUMS"
    }
