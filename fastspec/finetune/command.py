"""The ``fastspec finetune ENCODER DATA --protocol P`` subcommand (parser and handler)."""

from __future__ import annotations

import argparse
import sys

from fastspec.data import DataError
from fastspec.finetune.protocols import PROTOCOLS, protocol_settings
from fastspec.finetune.run import finetune

__all__ = ["add_finetune_parser", "cmd_finetune"]

_DESCRIPTION = """\
Fine-tune an exported encoder with a paper's protocol and export it with its head
(fastspec.load_encoder(OUT) returns logits). Protocols (settings and sources: README,
fastspec/finetune/protocols.py):
  audioset        [audioset:]SEGMENTS.csv[?audio=DIR]; tested on --test-data or
                  eval_segments.csv beside it; balanced sampling, mixup, SpecAugment,
                  patch-out, layer-wise lr decay; mAP
  esc50           [esc50:]ROOT (meta/esc50.csv, audio/): 5-fold cross-validation; accuracy
  speechcommands  [speechcommands:]ROOT (v2, validation_list.txt, testing_list.txt); accuracy
  folder          ROOT/<class>/*.wav (or train/ test/ [val/]) or a labelled manifest:
                  stratified 80/20 split (default)
Any setting can be changed with --set key=value (e.g. --set epochs=5 --set mixup_alpha=0)."""


def add_finetune_parser(sub) -> argparse.ArgumentParser:
    """Register ``finetune`` on the subparsers ``sub``; its handler is :func:`cmd_finetune`."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune an encoder with a paper's protocol (audioset, esc50, speechcommands)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("encoder", help="run directory, encoder.safetensors or encoder.json")
    p.add_argument("data", help="the labelled dataset, in the protocol's layout")
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="folder", help="the recipe")
    p.add_argument("--out", required=True, help="folder for the fine-tuned encoder(s)")
    p.add_argument("--test-data", help="test clips (audioset, folder)")
    p.add_argument("--epochs", type=int, help="override the protocol's epochs")
    p.add_argument("--batch-size", type=int, help="override the protocol's batch size")
    p.add_argument("--lr", type=float, help="absolute peak learning rate")
    p.add_argument("--seed", type=int, help="seed of head, order, crops, mixup and masks")
    p.add_argument("--set", action="append", default=[], metavar="key=value", help="any setting")
    p.add_argument("--pooling", choices=["avg", "token"], default="avg", help="head input")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=["auto", "bf16", "none"], default="none", help="autocast")
    p.add_argument("--workers", type=int, default=2, help="decoding threads")
    p.set_defaults(func=cmd_finetune)
    return p


def cmd_finetune(args: argparse.Namespace) -> int:
    """Run :func:`fastspec.finetune.finetune` and print the result."""
    try:
        settings = protocol_settings(
            args.protocol,
            args.set,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
        )
        summary = finetune(
            args.encoder,
            args.data,
            args.protocol,
            settings,
            args.out,
            test_data=args.test_data,
            pooling=args.pooling,
            device=args.device,
            workers=args.workers,
            amp=args.amp,
        )
    except (DataError, ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"fastspec finetune: error: {e}", file=sys.stderr)
        return 2
    metric = summary["metric"]
    for split in summary["splits"]:
        print(f"  {split['split']}: {metric} {split[metric]:.4f} -> {split['encoder']}")
    print(
        f"{args.protocol} on {summary['task']}: {metric} {summary['mean']:.4f} "
        f"({len(summary['splits'])} split(s), {summary['seconds']:.1f} s); "
        f"summary: {args.out}/finetune.json"
    )
    return 0
