"""The ``fastspec finetune ENCODER DATA --protocol P`` subcommand (parser and handler)."""

from __future__ import annotations

import argparse

from fastspec.cli_args import (
    add_command,
    add_encoder_arg,
    add_run_args,
    reports_errors,
    run_args,
)
from fastspec.finetune.protocols import PROTOCOLS, protocol_settings

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
    summary = "fine-tune an encoder with a paper's protocol (audioset, esc50, speechcommands)"
    p = add_command(sub, "finetune", summary, _DESCRIPTION, handler=cmd_finetune, raw=True)
    add_encoder_arg(p)
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
    add_run_args(p, amp="none", batch_size=None)  # --batch-size above is the protocol's
    return p


@reports_errors("finetune")
def cmd_finetune(args: argparse.Namespace) -> int:
    """Run :func:`fastspec.finetune.finetune` and print the result."""
    from fastspec.finetune.run import finetune

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
        **run_args(args, without=("batch_size",)),  # --batch-size is the protocol's
    )
    metric = summary["metric"]
    for split in summary["splits"]:
        print(f"  {split['split']}: {metric} {split[metric]:.4f} -> {split['encoder']}")
    print(
        f"{args.protocol} on {summary['task']}: {metric} {summary['mean']:.4f} "
        f"({len(summary['splits'])} split(s), {summary['seconds']:.1f} s); "
        f"summary: {args.out}/finetune.json"
    )
    return 0
