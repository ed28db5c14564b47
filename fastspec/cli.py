"""The ``fastspec`` command: ``pretrain`` (:data:`PRETRAIN_HELP`) and ``info`` here; ``shard``,
``stats``, ``embed`` and ``evaluate`` in :mod:`fastspec.commands`; ``finetune`` in
:mod:`fastspec.finetune.command`. Building the parser imports no torch (:func:`build_parser`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from fastspec import __version__
from fastspec.cli_args import add_command, report_error
from fastspec.commands import (
    add_embed_parser,
    add_evaluate_parser,
    add_shard_parser,
    add_stats_parser,
)
from fastspec.finetune.command import add_finetune_parser

PRETRAIN_HELP = """\
``fastspec pretrain`` with no arguments trains the default recipe on the built-in demo corpus
(about a minute on a 2-core CPU); ``--data PATH`` trains on real audio with the paper's settings.
Flags set the common fields; any config field can be set as a typed ``key.sub=value`` override
(``fastspec pretrain optim.blr=3e-4 masking.ratio=0.8``); unknown keys are an error."""


def _pretrain_parser(sub) -> argparse.ArgumentParser:
    summary = "pretrain an encoder (demo corpus unless --data is given)"
    p = add_command(sub, "pretrain", summary, PRETRAIN_HELP, handler=cmd_pretrain, raw=True)
    p.add_argument("--recipe", help="pretraining recipe (default: maskspec)")
    p.add_argument("--model", help="encoder from the registry, e.g. vit_base_patch16")
    p.add_argument("--data", help="folder of WAV/FLAC/OGG, or a .csv/.jsonl manifest")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (0 exports the initial encoder)")
    length.add_argument("--epochs", type=float, help="run length in passes over the data")
    p.add_argument("--batch-size", type=int, help="clips per micro-batch")
    p.add_argument("--accum", type=int, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, help="absolute peak learning rate (default: from optim.blr)")
    p.add_argument("--amp", choices=["bf16", "fp16", "none"], help="autocast precision")
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile every block and the loss",
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, help="data loader worker processes")
    p.add_argument(
        "--loader",
        choices=["auto", "dali", "torch"],
        help="data loader: DALI, torch, or auto (DALI when installed; the same batches)",
    )
    p.add_argument("--seed", type=int, help="seed of weights, data order, crops and masks")
    p.add_argument("--out", help="run directory (default: runs/<recipe>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="typed config overrides")
    return p


def build_config(args: argparse.Namespace):
    """Defaults (paper or demo) <- saved config when resuming <- flags <- key=value overrides."""
    from fastspec.train.config import Config, ConfigError, apply_override, default_config

    if args.resume:
        if not args.out:
            raise ConfigError("--resume needs --out: the run directory to continue")
        from pathlib import Path

        saved = Path(args.out) / "config.json"
        if not saved.is_file():
            raise ConfigError(f"--resume: {saved} does not exist")
        cfg = Config.from_dict(json.loads(saved.read_text()))
    else:
        cfg = default_config(args.recipe or "maskspec", demo=args.data is None)
    flags = {
        "recipe": args.recipe,
        "out": args.out,
        "data.source": args.data,
        "model.name": args.model,
        "train.steps": args.steps,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "optim.accum_steps": args.accum,
        "optim.lr": args.lr,
        "train.amp": args.amp,
        "train.compile": args.compile,
        "train.device": args.device,
        "data.num_workers": args.workers,
        "data.loader": args.loader,
        "train.seed": args.seed,
        "train.progress": False if args.no_progress else None,
    }
    for key, value in flags.items():
        if value is not None:
            apply_override(cfg, f"{key}={value}")
    if args.steps is not None:
        cfg.train.epochs = None  # an explicit --steps wins over a saved epochs setting
    if args.accum is not None:
        cfg.train.global_batch = None  # and an explicit --accum over a global batch
    for assignment in args.overrides:
        apply_override(cfg, assignment)
    return cfg


def cmd_pretrain(args: argparse.Namespace) -> int:
    from fastspec.train import ConfigError, NonFiniteLossError, RankFailure, pretrain

    try:
        cfg = build_config(args)
        result = pretrain(cfg, resume=args.resume)
    # ValueError: a bad data source or model name, named in the message
    except (ConfigError, NonFiniteLossError, ValueError) as e:
        return report_error("pretrain", e)
    except RankFailure as e:  # under torchrun: another rank died or hung (message says which)
        return report_error("pretrain", e, code=1)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun rank 0 reports for the run
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    print(
        f"saved to {result.run_dir}  (step {result.step}, last loss {loss}, "
        f"{result.seconds:.1f} s)\n  encoder: {result.encoder_path}\n"
        f"  load it with: fastspec.load_encoder({str(result.run_dir)!r})"
    )
    return 0


def info() -> dict:
    """Versions, the device, and the backend each stage of the data path will use
    (:func:`fastspec.info.info`)."""
    from fastspec.info import info as gather

    return gather()


def info_macs(model: str, input_shape: str = "1024x128") -> dict:
    """MACs (FLOPs / 2, counted by torch's FlopCounterMode) and parameters of one forward pass
    of ``model`` on one clip of ``input_shape`` frames x mel bins (``fastspec.models.macs``)."""
    from fastspec.models.macs import count_macs, parse_input

    n_frames, n_mels = parse_input(input_shape)
    return count_macs(model, n_frames, n_mels).to_dict()


def cmd_info_macs(args: argparse.Namespace) -> int:
    if not args.macs:
        return report_error("info", "--input needs --macs MODEL")
    try:
        report = info_macs(args.macs, args.input or "1024x128")
    except (ValueError, TypeError) as e:  # unknown model, bad input, frames that do not tile
        return report_error("info", e)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    padded = ""
    if report["padded_frames"] != report["n_frames"]:
        padded = f", padded to {report['padded_frames']} frames"
    print(f"model   {report['model']}  input {report['input']} (frames x mel bins){padded}")
    print(f"params  {report['params_m']:.2f} M")
    print(f"MACs    {report['gmacs']:.3f} G  (FLOPs / 2, forward pass)")
    for name, macs in report["macs_by_module"].items():
        print(f"  {name:12s} {macs / 1e9:8.3f} G")
    for i, macs in enumerate(report["macs_by_stage"]):
        print(f"  stage {i + 1:<6d} {macs / 1e9:8.3f} G")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    if getattr(args, "macs", None) or getattr(args, "input", None):
        return cmd_info_macs(args)
    report = info()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    from fastspec.info import format_info

    print(format_info(report))
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``fastspec`` parser and its subcommands' parsers by name; imports no torch (each
    handler imports what it runs)."""
    parser = argparse.ArgumentParser(prog="fastspec", description="fast audio SSL pretraining")
    parser.add_argument("--version", action="version", version=f"fastspec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _pretrain_parser(sub)
    add_shard_parser(sub)
    add_embed_parser(sub)
    add_evaluate_parser(sub)
    add_stats_parser(sub)
    add_finetune_parser(sub)
    p_info = sub.add_parser("info", help="versions, device and the backend of each stage")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    p_info.add_argument(
        "--macs", metavar="MODEL", help="count MACs and parameters of a registered model"
    )
    p_info.add_argument(
        "--input", metavar="TxF", help="input of --macs: frames x mel bins (default 1024x128)"
    )
    p_info.set_defaults(func=cmd_info)
    return parser, sub.choices


def main(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        # key=value overrides between flags: argparse takes positionals in one run only, so the
        # subcommand's arguments are parsed again, intermixed (the top level cannot be: it has
        # subcommands), which also reports anything truly unrecognised
        command = argv.index(args.command)
        args = commands[args.command].parse_intermixed_args(argv[command + 1 :])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
