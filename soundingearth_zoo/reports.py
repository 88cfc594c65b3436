"""Reports of the evaluations: JSON, Markdown tables, plots, and the measured-metrics block of the weight cards.

Everything is written atomically (a temporary file in the target folder, then a rename), so an interrupted run
never leaves half a report. The weight cards take their metrics only from the JSON the evaluations wrote, through
``soundingearth-zoo card-metrics``. Plots use matplotlib's object API (imported only to draw, no pyplot state).
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .errors import InputError

__all__ = [
    "card_metrics_section",
    "cli_card_metrics",
    "plot_gallery",
    "plot_recall_at_k",
    "retrieval_markdown",
    "to_json",
    "transfer_markdown",
    "update_card_metrics",
    "write_json",
    "write_text",
]

_DIRECTION_TITLES = {"image_to_audio": "image → audio", "audio_to_image": "audio → image"}


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def to_json(results: dict[str, Any]) -> dict[str, Any]:
    """A copy of a results dict that ``json`` can write: per-query arrays (``ranks``) are left out."""
    out = {}
    for key, value in results.items():
        if isinstance(value, dict):
            out[key] = to_json(value)
        elif not isinstance(value, np.ndarray):
            out[key] = value
    return out


def write_json(path: str | os.PathLike, results: dict[str, Any]) -> Path:
    return write_text(path, json.dumps(to_json(results), indent=2) + "\n")


def _percent(x: float) -> str:
    return f"{100 * x:.2f} %"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _retrieval_tables(results: dict[str, Any]) -> str:
    ks = results["ks"]
    header = ["direction", *(f"R@{k}" for k in ks), "median rank", "mean rank"]
    rows = []
    for direction, title in _DIRECTION_TITLES.items():
        res = results[direction]
        rows.append([title, *(_percent(res[f"recall@{k}"]) for k in ks), f"{res['median_rank']:g}",
                     f"{res['mean_rank']:.1f}"])
    text = _table(header, rows)
    if f"nearest_km@{ks[0]}" in results["image_to_audio"]:
        geo_rows = []
        for direction, title in _DIRECTION_TITLES.items():
            res = results[direction]
            geo_rows.append([title, *(f"{res[f'nearest_km@{k}']['median']:.1f} / {res[f'nearest_km@{k}']['mean']:.1f}"
                                      for k in ks)])
        text += ("\n\nDistance (haversine km) from the query's place to the nearest place among its top k retrievals, "
                 "median / mean over queries:\n\n" + _table(["direction", *(f"top {k}" for k in ks)], geo_rows))
    return text


def _retrieval_source(source: dict[str, Any]) -> str:
    if "model" in source:
        skipped = f", {len(source['skipped'])} unreadable items skipped" if source.get("skipped") else ""
        return f"`{source['model']}` on the {source['split']} split of `{source['archive']}`{skipped}. "
    return f"Embeddings `{source['image_embeddings']}` and `{source['audio_embeddings']}`. "


def _retrieval_settings(results: dict[str, Any]) -> str:
    source = _retrieval_source(results["source"]) if "source" in results else ""
    return (f"{source}{results['num_pairs']} pairs, {results['embedding_dim']}-d embeddings. "
            f"{results['recall_definition']}; {results['ties']}. Distance: {results['distance']}.")


def retrieval_markdown(results: dict[str, Any]) -> str:
    return f"# Cross-modal retrieval\n\n{_retrieval_settings(results)}\n\n{_retrieval_tables(results)}\n"


def _transfer_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = [[f"fine-tuned, after epoch {epoch}", _percent(acc)]
            for epoch, acc in results["finetune"]["accuracy_after_epoch"].items()]
    rows.append(["linear probe, frozen backbone", _percent(results["linear_probe"]["accuracy"])])
    knn = results["knn"]
    rows.append([f"{knn['k']}-NN, frozen backbone, cosine", _percent(knn["accuracy"])])
    return rows


def _transfer_settings(results: dict[str, Any]) -> str:
    weights = results["weights"] or ("pretrained" if results["pretrained"] else "random initialisation")
    return (f"Model `{results['model']}` ({weights}) on `{results['data']}`: {results['num_classes']} classes, "
            f"{results['num_train']} training and {results['num_test']} test images (alternate indices), "
            f"{results['image_size']} px, seed {results['seed']}. {results['protocol']}")


def transfer_markdown(results: dict[str, Any]) -> str:
    table = _table(["protocol", "test accuracy"], _transfer_rows(results))
    return f"# Transfer to scene classification\n\n{_transfer_settings(results)}\n\n{table}\n"


def card_metrics_section(results: dict[str, Any], command: str) -> str:
    """The Markdown a weight card shows for one evaluation's JSON, with the command that measured it."""
    task = results.get("task")
    if task == "retrieval":
        body = f"### Cross-modal retrieval\n\n{_retrieval_settings(results)}\n\n{_retrieval_tables(results)}"
    elif task == "transfer":
        table = _table(["protocol", "test accuracy"], _transfer_rows(results))
        body = f"### Transfer to scene classification\n\n{_transfer_settings(results)}\n\n{table}"
    else:
        raise InputError(f"not an evaluation result (task {task!r}); expected retrieval.json or transfer.json")
    return f"{body}\n\nMeasured by: `{command}`\n"


def update_card_metrics(card_path: str | os.PathLike, json_paths: Sequence[str | os.PathLike], command: str) -> Path:
    """Replace the block between the card's metrics markers by the sections of the given evaluation JSON files."""
    from .cards import METRICS_END, METRICS_START, replace_block

    card_path = Path(card_path)
    if not card_path.is_file():
        raise InputError(f"card not found: {card_path}")
    text = card_path.read_text(encoding="utf-8")
    replace_block(text, METRICS_START, METRICS_END, "", str(card_path))  # a card without the block: fail early
    sections = []
    for json_path in map(Path, json_paths):
        try:
            results = json.loads(json_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"results file not found: {json_path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{json_path} is not a JSON file ({err})") from None
        sections.append(card_metrics_section(results, command))
    return write_text(card_path, replace_block(text, METRICS_START, METRICS_END, "\n".join(sections), str(card_path)))


def cli_card_metrics(args: argparse.Namespace) -> int:
    path = update_card_metrics(args.card, args.results, args.command)
    print(f"updated the metrics of {path}")
    return 0


def _figure(**kwargs: Any) -> Any:
    """A matplotlib Figure outside pyplot: no global backend or figure registry is touched, nothing to close."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return Path(path)


def plot_recall_at_k(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Recall@k against k (log axis) for both directions, from the per-query ranks; the table's ks are marked."""
    fig = _figure(figsize=(6, 4))
    ax = fig.subplots()
    num = results["num_pairs"]
    k = np.unique(np.geomspace(1, num, num=min(num, 400)).round().astype(int))
    side = "left" if results["rank_convention"] == "lt" else "right"
    for direction, title in _DIRECTION_TITLES.items():
        ranks = np.sort(results[direction]["ranks"])
        (line,) = ax.plot(k, 100 * np.searchsorted(ranks, k, side=side) / num, label=title)
        marked = [m for m in results["ks"] if m <= num]
        ax.plot(marked, [100 * results[direction][f"recall@{m}"] for m in marked], "o", color=line.get_color())
    ax.plot(k, 100 * k / num, ":", color="grey", label="chance")
    hit = "rank < k" if side == "left" else "rank ≤ k"
    ax.set(xscale="log", xlabel="k", ylabel=f"Recall@k (%), hit: {hit}", ylim=(0, 100),
           title=f"Cross-modal retrieval among {num} pairs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_gallery(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """A grid: each row a query image, its true sound's spectrogram and the top retrieved spectrograms.

    Each row is a dict with ``key``, ``image`` ([H, W, 3] in [0, 1]), ``true_spectrogram`` ([mels, frames]) and
    ``retrieved``: a list of (key, spectrogram, is_true_partner).
    """
    cols = 2 + max(len(row["retrieved"]) for row in rows)
    # One colour scale for every spectrogram, so loud and quiet recordings look it.
    spectrograms = [row["true_spectrogram"] for row in rows] + [s for row in rows for _, s, _ in row["retrieved"]]
    scale = dict(vmin=min(s.min() for s in spectrograms), vmax=max(s.max() for s in spectrograms))
    fig = _figure(figsize=(1.8 * cols, 1.9 * len(rows)))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for ax_row, row in zip(axes, rows):
        for ax in ax_row:
            ax.set_axis_off()
        ax_row[0].imshow(row["image"])
        ax_row[0].set_title(f"image {row['key']}", fontsize=8)
        ax_row[1].imshow(row["true_spectrogram"], origin="lower", aspect="auto", cmap="magma", **scale)
        ax_row[1].set_title("true sound", fontsize=8)
        for rank, (ax, (key, spec, is_true)) in enumerate(zip(ax_row[2:], row["retrieved"]), start=1):
            ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", **scale)
            ax.set_title(f"#{rank}: {key}" + (" (true)" if is_true else ""), fontsize=8,
                         color="green" if is_true else "black")
    fig.suptitle("Image to audio retrieval: query, true sound, top retrieved sounds", fontsize=9)
    return _save(fig, path)
