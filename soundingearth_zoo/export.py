"""Publishing weights: one Hub-ready folder per tower, and its upload to the Hugging Face Hub.

An exported folder ``OUT/<model>.<tag>/`` is what plain timm loads, with ``timm.create_model("local-dir:<folder>",
pretrained=True)`` or, once pushed, ``"hf-hub:<org>/<name>"``, in a process that never imports this package:

- ``model.safetensors``: the tower's timm state dict; the audio tower's metadata also holds its front-end config
- ``config.json``: written by timm's own ``save_for_hf``. ``architecture`` is the plain timm ResNet the tower is
  (``resnet18``, ``resnet50``; ``model_args`` add ``in_chans``, ``channels``, ...), so no registration is needed to
  load it; only the 32-wide stem of the authors' last code revision names a variant registered here.
  ``pretrained_cfg`` is the registry's for the weight's tag (Hub id, licence, paper, description, input config);
  the audio tower's config also carries the front end (``audio.FRONTEND_CONFIG_KEY``)
- ``README.md``: the weight's card from ``weights_cards/``, its metrics block filled with what the run measured
- ``SHA256SUMS``: the other files' digests, in ``sha256sum`` format

Each folder is written beside its target and renamed into place, so an interrupted export leaves the previous one.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub.utils.sha import sha_fileobj
from safetensors.torch import save_file
from timm.models import save_for_hf

from .audio import FRONTEND_CONFIG_KEY, FRONTEND_METADATA_KEY, FrontendConfig
from .augment import IMAGE_SIZE
from .cards import METRICS_END, METRICS_START, STATUS_END, STATUS_START, load_card, replace_block
from .checkpoint import load_checkpoint
from .errors import InputError
from .models import AUDIO_MODEL, IMAGE_MODELS, audio_partner, check_model_name
from .reports import card_metrics_section, write_text

__all__ = [
    "PLAIN_ARCHITECTURES",
    "Tower",
    "build_card",
    "checkpoint_towers",
    "cli_export",
    "cli_push",
    "export_checkpoint",
    "export_towers",
    "load_weights",
    "measured_metrics",
    "print_export",
    "push_folder",
    "sha256_file",
    "upload_plan",
]

#: The plain timm architecture each registered tower is (same modules, same state dict keys).
PLAIN_ARCHITECTURES = {**IMAGE_MODELS, AUDIO_MODEL: "resnet18"}
WEIGHTS_FILE = "model.safetensors"
SUMS_FILE = "SHA256SUMS"
REPORT_FILE = "export-report.json"


@dataclass(frozen=True)
class Tower:
    """One tower to publish.

    ``name`` (``model.tag``) names the folder, the card and the registry ``pretrained_cfg``; ``architecture`` is the
    timm model that ``config.json`` names, which with the model's recorded ``model_args`` rebuilds ``model``.
    ``image_size``: the side the run trained the image tower at, when it is not the registry's (the demo's 64 px),
    so that timm's data config built from the export resizes to it.
    """

    name: str
    model: torch.nn.Module
    architecture: str
    frontend: FrontendConfig | None = None
    image_size: int | None = None


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return sha_fileobj(f).hex()


def _read_sums(folder: Path) -> dict[str, str]:
    sums = {}
    for line in (folder / SUMS_FILE).read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    return sums


def _write_sums(folder: Path) -> dict[str, str]:
    sums = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.name != SUMS_FILE}
    (folder / SUMS_FILE).write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()), encoding="utf-8")
    return sums


@contextlib.contextmanager
def _staged_folder(folder: Path) -> Iterator[Path]:
    """Yield an empty folder beside ``folder``; once the block has filled it, swap it in for ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measured_metrics(
    metrics: Mapping[str, Any] | None = None,
    results: Sequence[str | os.PathLike] = (),
    command: str | None = None,
) -> str:
    """The card's metrics block, rendered by ``reports.card_metrics_section``: the checkpoint's ``metrics`` (one
    evaluation result, or a mapping of several, each with the ``command`` that measured it) and evaluation JSON
    files (``retrieval.json``, ``transfer.json``) measured by ``command``. Empty when nothing was measured."""
    sections = []
    if metrics:
        for result in [metrics] if "task" in metrics else list(metrics.values()):
            if not isinstance(result, Mapping) or "command" not in result:
                raise InputError("the checkpoint's metrics are not evaluation results with the command that measured "
                                 "them")
            sections.append(card_metrics_section(dict(result), result["command"]))
    if results and not command:
        raise InputError("evaluation results need the command that measured them (--command)")
    for path in map(Path, results):
        try:
            sections.append(card_metrics_section(json.loads(path.read_text(encoding="utf-8")), command))
        except FileNotFoundError:
            raise InputError(f"results file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{path} is not a JSON file ({err})") from None
    return "\n".join(sections)


def build_card(name: str, measured: str, provenance: str, status: str) -> str:
    """The weight's card from ``weights_cards/`` with its status block replaced by ``status`` (which run made these
    files), the measured metrics block (the card's own block, which says nothing was measured, stays when
    ``measured`` is empty) and the provenance of the exported files."""
    where = f"the card of {name}"
    text = replace_block(load_card(name).content, STATUS_START, STATUS_END, status, where)
    if measured:
        text = replace_block(text, METRICS_START, METRICS_END, measured, where)
    return f"{text.rstrip()}\n\n## Provenance of these files\n\n{provenance}\n"


def write_tower(tower: Tower, folder: Path, card: str) -> dict[str, str]:
    """Write one tower's files into an existing empty ``folder``; returns ``{file name: sha256}``."""
    pretrained_cfg = {k: v for k, v in timm.models.get_pretrained_cfg(tower.name).to_dict().items() if v is not None}
    if tower.image_size is not None:
        pretrained_cfg["input_size"] = (pretrained_cfg["input_size"][0], tower.image_size, tower.image_size)
    model_config: dict[str, Any] = {"pretrained_cfg": {**pretrained_cfg, "architecture": tower.architecture}}
    if tower.frontend is not None:
        model_config[FRONTEND_CONFIG_KEY] = tower.frontend.to_dict()
    save_for_hf(tower.model, folder, model_config=model_config, safe_serialization=True)
    if tower.frontend is not None:
        # save_for_hf writes no safetensors metadata; the audio loader also reads the front end from there
        metadata = {"format": "pt", FRONTEND_METADATA_KEY: tower.frontend.to_json()}
        save_file(tower.model.state_dict(), folder / WEIGHTS_FILE, metadata=metadata)
    (folder / "README.md").write_text(card, encoding="utf-8")
    return _write_sums(folder)


def export_towers(
    towers: Mapping[str, Tower],
    out: str | os.PathLike,
    source: str | os.PathLike,
    provenance: str,
    status: str,
    measured: str = "",
    source_sha256: str | None = None,
) -> dict[str, Path]:
    """Write ``OUT/<model>.<tag>/`` for each tower and ``OUT/export-report.json`` (source and file digests).
    ``source_sha256``: the source's digest when the caller has already read it (checkpoints can be large)."""
    out = Path(out)
    digest = source_sha256 or sha256_file(source)
    report: dict[str, Any] = {"source": {"path": str(source), "sha256": digest}, "towers": {}}
    folders = {}
    for role, tower in towers.items():
        folder = out / tower.name
        card = build_card(tower.name, measured, provenance, status)
        with _staged_folder(folder) as tmp:
            sums = write_tower(tower, tmp, card)
        folders[role] = folder
        report["towers"][role] = {"name": tower.name, "architecture": tower.architecture, "folder": str(folder),
                                  "sha256": sums}
    write_text(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return folders


def _entry(ckpt: Mapping[str, Any], key: str) -> Any:
    try:
        return ckpt[key]
    except KeyError:
        raise InputError(f"the checkpoint has no {key!r} entry") from None


def load_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, prefix: str = "") -> None:
    """``model.load_state_dict(state_dict)``, but a key that does not fit is an InputError naming it as the source
    spells it (``prefix`` + key) instead of PyTorch's multi-line report."""
    expected = model.state_dict()
    for key, value in state_dict.items():
        if key not in expected:
            raise InputError(f"{source}: unexpected key {prefix}{key}")
        if not isinstance(value, torch.Tensor) or value.shape != expected[key].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise InputError(f"{source}: {prefix}{key} has shape {shape}, expected {tuple(expected[key].shape)}")
    missing = sorted(expected.keys() - state_dict.keys())
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{source}: missing key {prefix}{missing[0]}{more}")
    model.load_state_dict(state_dict)


def checkpoint_towers(ckpt: Mapping[str, Any]) -> dict[str, Tower]:
    """The two towers of a training checkpoint (see ``checkpoint.py``), named by the run's objective."""
    config = _entry(ckpt, "config")
    image_name = check_model_name(f"{_entry(config, 'image_model')}.{_entry(config, 'objective')}")
    if _entry(config, "audio_model") != AUDIO_MODEL:
        raise InputError(f"audio model {config['audio_model']!r} is not the SoundingEarth audio tower {AUDIO_MODEL}")
    names = {"image": image_name, "audio": audio_partner(image_name)}
    frontend = FrontendConfig.from_dict(_entry(ckpt, "frontend"))
    towers = {}
    for role, name in names.items():
        model = timm.create_model(name)  # the registry's pretrained_cfg for this tag, then the run's weights
        load_weights(model, _entry(ckpt, f"{role}_state_dict"), f"checkpoint {role}_state_dict")
        architecture = PLAIN_ARCHITECTURES[name.partition(".")[0]]
        if role == "image":
            size = config.get("image_size")
            default = model.pretrained_cfg["input_size"][-1]
            towers[role] = Tower(name, model.eval(), architecture, image_size=size if size != default else None)
        else:
            towers[role] = Tower(name, model.eval(), architecture, frontend)
    return towers


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    results: Sequence[str | os.PathLike] = (),
    command: str | None = None,
) -> dict[str, Path]:
    """Export both towers of a training checkpoint: ``{"image": folder, "audio": folder}`` under ``out``. The cards
    show the checkpoint's own ``metrics`` and the evaluation ``results`` files (measured by ``command``)."""
    ckpt = load_checkpoint(checkpoint)
    towers = checkpoint_towers(ckpt)
    measured = measured_metrics(ckpt.get("metrics"), results, command)
    digest = sha256_file(checkpoint)
    provenance = (
        f"Exported by `soundingearth-zoo export` from the training checkpoint `{Path(checkpoint).name}` "
        f"(sha256 `{digest}`, epoch {ckpt.get('epoch')}, step {ckpt.get('step')}); "
        f"image tower `{towers['image'].name}` and audio tower `{towers['audio'].name}` of that run."
    )
    if towers["image"].image_size is not None:
        size = towers["image"].image_size
        provenance += (f" The image tower was trained on {size}x{size} px inputs, not the {IMAGE_SIZE} px the Model "
                       f"section describes; `config.json` gives its input size as {size} px.")
    status = (
        f"Exported from a training run on `{ckpt['config'].get('data') or 'unrecorded data'}`. These files are "
        "SoundingEarth weights only if that data is the SoundingEarth archive: towers trained on the generated demo "
        "archive (`soundingearth-zoo make-demo-data`) exist to test the pipeline and are never published."
    )
    return export_towers(towers, out, checkpoint, provenance, status, measured, source_sha256=digest)


def print_export(folders: Mapping[str, Path]) -> None:
    for role, folder in folders.items():
        print(f"{role}: {folder}")
        for name, digest in _read_sums(folder).items():
            print(f"  {digest}  {name}")
    print(f"report: {next(iter(folders.values())).parent / REPORT_FILE}")


def cli_export(args: argparse.Namespace) -> int:
    print_export(export_checkpoint(args.checkpoint, args.out, args.results, args.command))
    return 0


# --- push ---------------------------------------------------------------------------------------------------------


def upload_plan(folder: str | os.PathLike) -> list[tuple[str, int, str]]:
    """``(path in repo, bytes, sha256)`` of every file ``push`` uploads: all files but hidden ones, each checked
    against the folder's ``SHA256SUMS`` when it has one, so a file changed since export is not published."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder} is not an exported tower folder (no config.json)")
    files = [
        p for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    sums = _read_sums(folder) if (folder / SUMS_FILE).is_file() else {}
    plan = []
    for path in files:
        rel = path.relative_to(folder).as_posix()
        digest = sha256_file(path)
        if rel in sums and sums[rel] != digest:
            raise InputError(f"{path} has changed since export (its sha256 differs from {SUMS_FILE})")
        plan.append((rel, path.stat().st_size, digest))
    return plan


def push_folder(
    folder: str | os.PathLike, repo_id: str, dry_run: bool = False
) -> tuple[str, list[tuple[str, int, str]]]:
    """Create the model repo if needed and upload the folder's files; returns the repo's URL and the upload plan.
    With ``dry_run`` nothing is sent. The token is huggingface_hub's usual one (``hf auth login`` or HF_TOKEN)."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise InputError(f"invalid repo id {repo_id!r}: {err}") from None
    if "/" not in repo_id:
        raise InputError(f"repo id {repo_id!r} must name its owner: ORG/NAME")
    plan = upload_plan(folder)
    api = HfApi()
    url = f"{api.endpoint}/{repo_id}"
    if dry_run:
        return url, plan
    if get_token() is None:
        raise InputError("no Hugging Face token: run `hf auth login` or set HF_TOKEN")
    url = str(api.create_repo(repo_id, repo_type="model", exist_ok=True))
    api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        allow_patterns=[rel for rel, _, _ in plan],
        commit_message=f"Upload {Path(folder).name} with soundingearth-zoo",
    )
    return url, plan


def cli_push(args: argparse.Namespace) -> int:
    url, plan = push_folder(args.folder, args.repo_id, dry_run=args.dry_run)
    for rel, size, digest in plan:
        print(f"{digest}  {size:>12}  {rel}")
    total = sum(size for _, size, _ in plan)
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(plan)} files ({total} bytes) to {url}" + (" (dry run: nothing sent)" if args.dry_run else ""))
    return 0
