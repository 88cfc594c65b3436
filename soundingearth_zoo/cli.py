"""The ``soundingearth-zoo`` command: one verb per job, each run by a function of the module that does that job.

Arguments are declared here; each verb names its handler as ``module:function`` and the module is imported only
when its verb runs, so ``soundingearth-zoo list`` needs nothing beyond the thin install. A handler takes the parsed
arguments and returns the exit code. Bad input (``InputError``, a missing file) ends with one line on stderr and
exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import InputError


def _verb(sub: argparse._SubParsersAction, name: str, target: str, help: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(_target=target)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soundingearth-zoo", description="SoundingEarth audiovisual models for remote sensing."
    )
    parser.add_argument("--version", action="store_true", help="print the package version and exit")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    _verb(sub, "list", "soundingearth_zoo.cards:cli_list", "registered models and their pretrained tags (name.tag)")

    p = _verb(sub, "info", "soundingearth_zoo.cards:cli_info", "pretrained config and card summary of one weight")
    p.add_argument("name", metavar="NAME[.TAG]")

    p = _verb(sub, "embed", "soundingearth_zoo.embed:cli_embed", "embed image or audio files with one tower")
    p.add_argument("model", metavar="MODEL", help="a tower, e.g. soundingearth_resnet18.batch_triplet")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders")
    p.add_argument("--out", required=True, metavar="FILE.npz")
    p.add_argument("--weights", metavar="FILE", help="a local safetensors file instead of the Hub weight")
    p.add_argument("--no-pretrained", action="store_true", help="random initialisation (for baselines, tests)")
    p.add_argument("--batch-size", type=int, default=32, help="files per batch")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (bf16 autocast on CUDA)")
    p.add_argument("--max-windows", type=int, default=None,
                   help="cap on 128-frame windows per audio clip (default: the front end's, 64)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0: decode in the main process)")

    p = _verb(sub, "search", "soundingearth_zoo.embed:cli_search", "rank audio for an image, or images for audio")
    p.add_argument("query", metavar="QUERY", help="an image or an audio file")
    p.add_argument("candidates", nargs="+", metavar="CANDIDATE", help="files or folders of the other modality")
    p.add_argument("--model", default="soundingearth_resnet18.batch_triplet", help="image tower; its partner is used")
    p.add_argument("--image-weights", metavar="FILE")
    p.add_argument("--audio-weights", metavar="FILE")
    p.add_argument("--no-pretrained", action="store_true", help="random towers (for tests)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="candidate files per batch")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (bf16 autocast on CUDA)")

    p = _verb(sub, "make-demo-data", "soundingearth_zoo.demo_data:cli_make_demo_data", "write a small synthetic archive")
    p.add_argument("out", metavar="DIR")
    p.add_argument("--num-items", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=256, help="tile side in px (the real tiles have 1024)")
    p.add_argument("--seconds", type=float, default=4.0, help="mean clip length")
    p.add_argument("--corrupt", action="store_true", help="add a truncated MP3, a garbage JPEG, a missing file")

    p = _verb(sub, "prepare", "soundingearth_zoo.prepare:cli_prepare", "convert an archive into training shards")
    p.add_argument("archive", metavar="ARCHIVE")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    p.add_argument("--shard-size", type=int, default=256, help="items per shard")
    p.add_argument("--crop-size", type=int, default=512, help="largest side of the stored central crop, px")
    p.add_argument("--max-frames", type=int, default=2048, help="cap on stored spectrogram frames per clip")

    p = _verb(sub, "train", "soundingearth_zoo.train:cli_train", "train a pair of towers (torchrun for several GPUs)")
    p.add_argument("--preset", default=None, help="one of the paper's six runs, e.g. resnet18_batch_triplet")
    p.add_argument("--config", metavar="FILE", help="a YAML or JSON config (e.g. a run's config.yaml), over the preset")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output dir")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. epochs=3 data=DIR")

    ev = _verb(sub, "evaluate", "", "the paper's evaluations").add_subparsers(dest="evaluation", metavar="EVALUATION")
    p = _verb(ev, "retrieval", "soundingearth_zoo.retrieval:cli_retrieval", "cross-modal retrieval metrics")
    p.add_argument("--image-embeddings", metavar="I.npz")
    p.add_argument("--audio-embeddings", metavar="A.npz")
    p.add_argument("--metadata", metavar="metadata.csv", help="coordinates (key, latitude, longitude) for km@k")
    p.add_argument("--model", help="image tower name.tag (its partner embeds the audio) or a training checkpoint")
    p.add_argument("--archive", metavar="DIR", help="archive whose split is embedded with --model")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--image-weights", metavar="FILE")
    p.add_argument("--audio-weights", metavar="FILE")
    p.add_argument("--no-pretrained", action="store_true", help="random towers (for baselines, tests)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0, help="processes decoding images and audio (with --model)")
    p.add_argument("--ks", type=int, nargs="+", default=None, metavar="K", help="default: 1 5 10 100 500 1000")
    p.add_argument("--rank-convention", choices=["le", "lt"], default="le",
                   help="Recall@k counts rank <= k (le) or the reference code's rank < k (lt)")
    p.add_argument("--normalise", action="store_true",
                   help="divide each image's distances by their mean, as the reference code did")
    p.add_argument("--gallery-size", type=int, default=4, help="query images in gallery.png (with --model)")
    p.add_argument("--out", required=True, metavar="DIR")
    p = _verb(ev, "transfer", "soundingearth_zoo.transfer:cli_transfer", "transfer to scene classification")
    p.add_argument("--model", required=True, help="any timm model name, e.g. soundingearth_resnet18.batch_triplet")
    p.add_argument("--data", required=True, metavar="IMAGEFOLDER")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--weights", metavar="FILE", help="a local safetensors file or state dict for the backbone")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--knn-k", type=int, default=20)

    p = _verb(sub, "card-metrics", "soundingearth_zoo.reports:cli_card_metrics",
              "write measured metrics from evaluation JSON into a weight card")
    p.add_argument("card", metavar="CARD")
    p.add_argument("results", nargs="+", metavar="JSON", help="retrieval.json / transfer.json files")
    p.add_argument("--command", required=True, help="the command line that produced the JSON, shown in the card")

    p = _verb(sub, "export", "soundingearth_zoo.export:cli_export", "export a checkpoint's towers for the Hub")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--results", nargs="+", default=[], metavar="JSON",
                   help="evaluation results of this checkpoint (retrieval.json, transfer.json) for the cards")
    p.add_argument("--command", help="the command line that measured --results, shown in the cards")
    p = _verb(sub, "push", "soundingearth_zoo.export:cli_push", "upload an exported folder to the Hugging Face Hub")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--repo-id", required=True, metavar="ORG/NAME")
    p.add_argument("--dry-run", action="store_true")
    p = _verb(sub, "convert-original", "soundingearth_zoo.convert:cli_convert", "convert an authors' checkpoint")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--objective", default="batch_triplet",
                   help="the loss the checkpoint was trained with (it does not record it); picks the weight tag")

    p = _verb(sub, "demo", "soundingearth_zoo.demo:cli_demo", "the README's main job, end to end on the CPU")
    p.add_argument("out", metavar="DIR")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 30, about 5 minutes on 2 cores)")
    p.add_argument("--num-items", type=int, default=None, help="pairs in the synthetic archive (default 240)")
    p.add_argument("--seed", type=int, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not getattr(args, "_target", ""):
        parser.print_help(sys.stderr)
        return 2
    module_name, _, function = args._target.partition(":")
    try:
        handler = getattr(importlib.import_module(module_name), function)
        return int(handler(args) or 0)
    except (InputError, FileNotFoundError) as err:
        print(f"soundingearth-zoo {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
