"""The ``fastspec`` command: ``pretrain``, ``shard`` and ``info``.

``fastspec pretrain`` with no arguments trains the default recipe on the built-in demo corpus
(about a minute on a 2-core CPU); ``--data PATH`` trains on real audio with the paper's settings.
Flags set the common fields; any config field can be set as a typed ``key.sub=value`` override
(``fastspec pretrain optim.blr=3e-4 masking.ratio=0.8``); unknown keys are an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from fastspec import __version__
from fastspec.stats import add_stats_parser


def _pretrain_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pretrain",
        help="pretrain an encoder (demo corpus unless --data is given)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    for assignment in args.overrides:
        apply_override(cfg, assignment)
    return cfg


def cmd_pretrain(args: argparse.Namespace) -> int:
    from fastspec.train import ConfigError, NonFiniteLossError, RankFailure, pretrain

    try:
        cfg = build_config(args)
        result = pretrain(cfg, resume=args.resume)
    except (ConfigError, NonFiniteLossError) as e:
        print(f"fastspec pretrain: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # bad data source, bad model name: named in the message
        print(f"fastspec pretrain: error: {e}", file=sys.stderr)
        return 2
    except RankFailure as e:  # under torchrun: another rank died or hung (message says which)
        print(f"fastspec pretrain: error: {e}", file=sys.stderr)
        return 1
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
        print("fastspec info: error: --input needs --macs MODEL", file=sys.stderr)
        return 2
    try:
        report = info_macs(args.macs, args.input or "1024x128")
    except (ValueError, TypeError) as e:  # unknown model, bad input, frames that do not tile
        print(f"fastspec info: error: {e}", file=sys.stderr)
        return 2
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


def _shard_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "shard",
        help="write audio as WebDataset tar shards (16-bit PCM or FLAC)",
        description=(
            "Decode, check, mix down and optionally resample every clip of a folder, manifest "
            "or dataset (anything --data takes) and write it into tar shards in the WebDataset "
            "layout: KEY.wav or KEY.flac plus KEY.json (name, rate, frames, labels). Bad files "
            "are skipped with one line each. Train on the result with --data OUT."
        ),
    )
    p.add_argument("source", help="folder, .csv/.jsonl manifest, or esc50:/speechcommands:/...")
    p.add_argument("out", help="output folder for shard-000000.tar, ...")
    p.add_argument(
        "--format",
        choices=["int16", "flac"],
        default="int16",
        help="payload: 16-bit PCM WAV (fastest to read, default) or 16-bit FLAC (about half)",
    )
    p.add_argument("--sample-rate", type=int, help="resample every clip to this rate (Hz)")
    p.add_argument("--max-count", type=int, default=10_000, help="clips per shard at most")
    p.add_argument("--max-size", type=float, default=1024.0, help="MB per shard at most")
    p.add_argument("--prefix", default="shard", help="shard file name prefix (default: shard)")
    p.add_argument("--workers", type=int, default=2, help="decoding threads")
    return p


def cmd_shard(args: argparse.Namespace) -> int:
    """``fastspec shard SOURCE OUT``: :func:`fastspec.data.write_shards` from the command line."""
    from fastspec.data import DataError, open_source, summarize_skipped, write_shards

    try:
        source = open_source(args.source)
        stats = write_shards(
            source,
            args.out,
            fmt=args.format,
            sample_rate=args.sample_rate,
            max_count=args.max_count,
            max_bytes=max(1, int(args.max_size * 2**20)),
            prefix=args.prefix,
            workers=args.workers,
        )
    except (DataError, ValueError) as e:
        print(f"fastspec shard: error: {e}", file=sys.stderr)
        return 2
    skipped = f", skipped {len(stats.skipped)} ({summarize_skipped(stats.skipped)})"
    print(
        f"wrote {stats.clips} clips ({stats.seconds / 3600:.2f} h of audio, "
        f"{stats.bytes / 2**20:.1f} MB) into {len(stats.shards)} shards in {args.out} "
        f"in {stats.wall_seconds:.1f} s{skipped if stats.skipped else ''}\n"
        f"  train on them with: fastspec pretrain --data {args.out}"
    )
    return 0


def _embed_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "embed",
        help="audio files or folders -> .npy clip (and frame) embeddings",
        description=(
            "Embed audio with an exported encoder. OUT/embeddings.npy holds float32 [N, D] clip "
            "embeddings, one row per line of OUT/clips.csv (row, name, path, seconds, n_frames, "
            "frames_file, labels); with --frames, OUT/frames/NNNNNN.npy holds float32 "
            "[n_frames, D] per clip, frame t centred at first_frame_ms + t * frame_hop_ms "
            "(OUT/embed.json). Clips that cannot be decoded are skipped and listed in embed.json."
        ),
    )
    p.add_argument("encoder", help="run directory, encoder.safetensors or encoder.json")
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="audio files, folders, manifests or datasets"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--frames", action="store_true", help="also write frame embeddings")
    p.add_argument("--batch-size", type=int, default=16, help="clips per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=["auto", "bf16", "none"], default="auto", help="autocast")
    p.add_argument("--workers", type=int, default=2, help="decoding threads")
    add_pooling_args(p)
    return p


def add_pooling_args(p: argparse.ArgumentParser) -> None:
    """``--pooling`` / ``--last-blocks``: how clip embeddings are pooled (load_encoder)."""
    p.add_argument(
        "--pooling",
        choices=["avg", "token", "atst"],
        default="avg",
        help="clip embedding: mean of patch tokens (avg), class token, or atst (class token "
        "+ mean of the last blocks, ATST's linear evaluation)",
    )
    p.add_argument("--last-blocks", type=int, default=1, help="blocks pooled by --pooling atst")


def cmd_embed(args: argparse.Namespace) -> int:
    """``fastspec embed ENCODER INPUT... --out DIR``: :func:`fastspec.evaluate.write_embeddings`."""
    from fastspec.data import DataError
    from fastspec.encoder import load_encoder
    from fastspec.evaluate import open_inputs, write_embeddings
    from fastspec.evaluate.extract import resolve_device

    try:
        encoder = load_encoder(
            args.encoder,
            device=resolve_device(args.device),
            pooling=args.pooling,
            last_blocks=args.last_blocks,
        )
        table = open_inputs(args.inputs)
        summary = write_embeddings(
            encoder,
            table,
            args.out,
            frames=args.frames,
            batch_size=args.batch_size,
            workers=args.workers,
            amp=args.amp,
        )
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"fastspec embed: error: {e}", file=sys.stderr)
        return 2
    frames = f" and frame embeddings in {args.out}/frames/" if summary.frames else ""
    skipped = f", skipped {len(summary.skipped)} (see embed.json)" if summary.skipped else ""
    print(
        f"wrote {summary.clips} clip embeddings [{summary.clips}, {summary.embed_dim}] to "
        f"{args.out}/embeddings.npy{frames} in {summary.seconds:.1f} s{skipped}\n"
        f"  rows: {args.out}/clips.csv"
    )
    return 0


def _evaluate_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate",
        help="linear probe / fine-tuning of an encoder, against two baselines",
        description=(
            "Evaluate an exported encoder on a labelled dataset: a linear probe on frozen "
            "embeddings and/or fine-tuning, next to two baselines (log-mel mean+std pooling "
            "and a randomly initialised encoder of the same architecture). DATA: "
            "esc50:ROOT (5-fold CV), speechcommands:ROOT (train/validation/test), "
            "audioset:SEGMENTS.csv?audio=DIR (multi-label, mAP; tested on --test-data or "
            "eval_segments.csv beside it), a folder of class folders (k-fold CV, or its "
            "train/ and test/ subfolders), or a manifest with a label column. Prints a table "
            "and writes a JSON report."
        ),
    )
    p.add_argument("encoder", help="run directory, encoder.safetensors or encoder.json")
    p.add_argument("data", help="the labelled dataset (see above)")
    p.add_argument("--test-data", help="test clips (then DATA is the training set)")
    p.add_argument("--val-data", help="validation clips (with --test-data)")
    p.add_argument(
        "--mode", choices=["linear", "finetune", "both"], default="linear", help="what to run"
    )
    p.add_argument("--folds", type=int, default=5, help="k of k-fold CV for unsplit data")
    p.add_argument("--out", help="JSON report path (default: eval-<dataset>.json)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=["auto", "bf16", "none"], default="auto", help="autocast")
    p.add_argument("--workers", type=int, default=2, help="decoding threads")
    p.add_argument("--seed", type=int, default=0, help="seed of baselines, folds, fine-tuning")
    p.add_argument("--ft-epochs", type=int, default=10, help="fine-tuning epochs")
    p.add_argument("--ft-lr", type=float, default=1e-4, help="fine-tuning encoder lr")
    p.add_argument("--ft-head-lr", type=float, default=1e-3, help="fine-tuning head lr")
    p.add_argument("--ft-batch-size", type=int, default=16, help="fine-tuning batch size")
    p.add_argument(
        "--ft-clip-seconds", type=float, default=10.0, help="fine-tuning random crop length"
    )
    add_pooling_args(p)
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``fastspec evaluate ENCODER DATA``: :func:`fastspec.evaluate.evaluate` and its report."""
    import re

    from fastspec.data import DataError
    from fastspec.evaluate import EvalSettings, FinetuneSettings, evaluate, open_task

    try:
        settings = EvalSettings(
            modes=("linear", "finetune") if args.mode == "both" else (args.mode,),
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            amp=args.amp,
            seed=args.seed,
            pooling=args.pooling,
            last_blocks=args.last_blocks,
            finetune=FinetuneSettings(
                epochs=args.ft_epochs,
                batch_size=args.ft_batch_size,
                lr=args.ft_lr,
                head_lr=args.ft_head_lr,
                clip_seconds=args.ft_clip_seconds,
                seed=args.seed,
            ),
        )
        task = open_task(
            args.data,
            test_data=args.test_data,
            val_data=args.val_data,
            folds=args.folds,
            seed=args.seed,
        )
        report = evaluate(args.encoder, task, settings)
    except (DataError, ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"fastspec evaluate: error: {e}", file=sys.stderr)
        return 2
    out = (
        args.out or "eval-" + re.sub(r"[^A-Za-z0-9]+", "-", task.name).strip("-").lower() + ".json"
    )
    print(report.table())
    print(f"report: {report.save(out)} ({report.seconds:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from fastspec.finetune.command import add_finetune_parser

    parser = argparse.ArgumentParser(prog="fastspec", description="fast audio SSL pretraining")
    parser.add_argument("--version", action="version", version=f"fastspec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _pretrain_parser(sub).set_defaults(func=cmd_pretrain)
    _shard_parser(sub).set_defaults(func=cmd_shard)
    _embed_parser(sub).set_defaults(func=cmd_embed)
    _evaluate_parser(sub).set_defaults(func=cmd_evaluate)
    add_stats_parser(sub)
    add_finetune_parser(sub)  # fastspec.finetune.command: `fastspec finetune`
    p_info = sub.add_parser("info", help="versions, device and the backend of each stage")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    p_info.add_argument(
        "--macs", metavar="MODEL", help="count MACs and parameters of a registered model"
    )
    p_info.add_argument(
        "--input", metavar="TxF", help="input of --macs: frames x mel bins (default 1024x128)"
    )
    p_info.set_defaults(func=cmd_info)
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        # key=value overrides between flags: argparse takes positionals in one run only, so the
        # subcommand's arguments are parsed again, intermixed (the top level cannot be: it has
        # subcommands), which also reports anything truly unrecognised
        command = argv.index(args.command)
        args = sub.choices[args.command].parse_intermixed_args(argv[command + 1 :])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
