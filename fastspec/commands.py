"""The ``fastspec`` subcommands on data and exported encoders: ``shard``, ``stats``, ``embed``
and ``evaluate`` (``pretrain`` and ``info``: :mod:`fastspec.cli`; ``finetune``:
:mod:`fastspec.finetune.command`).

Each ``add_*_parser`` registers a subcommand without importing torch; its handler imports what
it runs, and a user's error in it ends in one line (:func:`~fastspec.cli_args.reports_errors`).
"""

from __future__ import annotations

import argparse
import re

from fastspec.cli_args import (
    add_command,
    add_encoder_arg,
    add_pooling_args,
    add_run_args,
    reports_errors,
    run_args,
)

__all__ = [
    "add_embed_parser",
    "add_evaluate_parser",
    "add_shard_parser",
    "add_stats_parser",
    "cmd_embed",
    "cmd_evaluate",
    "cmd_shard",
    "cmd_stats",
]


def add_shard_parser(sub) -> argparse.ArgumentParser:
    """``fastspec shard SOURCE OUT``; its handler is :func:`cmd_shard`."""
    p = add_command(
        sub,
        "shard",
        "write audio as WebDataset tar shards (16-bit PCM or FLAC)",
        "Decode, check, mix down and optionally resample every clip of a folder, manifest "
        "or dataset (anything --data takes) and write it into tar shards in the WebDataset "
        "layout: KEY.wav or KEY.flac plus KEY.json (name, rate, frames, labels). Bad files "
        "are skipped with one line each. Train on the result with --data OUT.",
        handler=cmd_shard,
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


@reports_errors("shard")
def cmd_shard(args: argparse.Namespace) -> int:
    """``fastspec shard SOURCE OUT``: :func:`fastspec.data.write_shards` from the command line."""
    from fastspec.data import open_source, summarize_skipped, write_shards

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
    skipped = f", skipped {len(stats.skipped)} ({summarize_skipped(stats.skipped)})"
    print(
        f"wrote {stats.clips} clips ({stats.seconds / 3600:.2f} h of audio, "
        f"{stats.bytes / 2**20:.1f} MB) into {len(stats.shards)} shards in {args.out} "
        f"in {stats.wall_seconds:.1f} s{skipped if stats.skipped else ''}\n"
        f"  train on them with: fastspec pretrain --data {args.out}"
    )
    return 0


def add_stats_parser(sub) -> argparse.ArgumentParser:
    """``fastspec stats DATA``; its handler is :func:`cmd_stats`."""
    p = add_command(
        sub,
        "stats",
        "per-mel-bin mean and std of a front end's log-mel over a dataset",
        "Compute each mel bin's mean and standard deviation (un-normalised log-mel, every "
        "valid frame) over DATA (as --data of pretrain; 'demo' for the demo corpus) and "
        "write them as JSON, for presets that normalise per bin.",
        handler=cmd_stats,
    )
    p.add_argument("data", help="folder, manifest, shards, KIND:PATH dataset, or demo")
    p.add_argument("--preset", default="kaldi", help="front-end preset (default kaldi)")
    p.add_argument("--sample-rate", type=int, help="override the preset's sample rate")
    p.add_argument("--n-mels", type=int, help="override the preset's mel bins")
    p.add_argument("--max-clips", type=int, help="use only the first N clips")
    p.add_argument("--out", default="mel-stats.json", help="JSON file to write")
    return p


@reports_errors("stats")
def cmd_stats(args: argparse.Namespace) -> int:
    """``fastspec stats DATA``: :func:`fastspec.stats.compute_stats` into a JSON file."""
    from fastspec.frontend import get_preset
    from fastspec.stats import compute_stats

    overrides = {"sample_rate": args.sample_rate, "n_mels": args.n_mels}
    frontend = get_preset(args.preset, **{k: v for k, v in overrides.items() if v})
    stats = compute_stats(args.data, frontend, max_clips=args.max_clips)
    path = stats.save(args.out)
    print(f"wrote per-bin statistics of {stats.clips} clips ({stats.frames} frames) to {path}")
    return 0


def add_embed_parser(sub) -> argparse.ArgumentParser:
    """``fastspec embed ENCODER INPUT... --out DIR``; its handler is :func:`cmd_embed`."""
    p = add_command(
        sub,
        "embed",
        "audio files or folders -> .npy clip (and frame) embeddings",
        "Embed audio with an exported encoder. OUT/embeddings.npy holds float32 [N, D] clip "
        "embeddings, one row per line of OUT/clips.csv (row, name, path, seconds, n_frames, "
        "frames_file, labels); with --frames, OUT/frames/NNNNNN.npy holds float32 "
        "[n_frames, D] per clip, frame t centred at first_frame_ms + t * frame_hop_ms "
        "(OUT/embed.json). Clips that cannot be decoded are skipped and listed in embed.json.",
        handler=cmd_embed,
    )
    add_encoder_arg(p)
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="audio files, folders, manifests or datasets"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--frames", action="store_true", help="also write frame embeddings")
    add_run_args(p)
    add_pooling_args(p)
    return p


@reports_errors("embed")
def cmd_embed(args: argparse.Namespace) -> int:
    """``fastspec embed ENCODER INPUT... --out DIR``: :func:`fastspec.evaluate.write_embeddings`."""
    from fastspec.encoder import load_encoder
    from fastspec.evaluate import open_inputs, write_embeddings
    from fastspec.evaluate.extract import resolve_device

    encoder = load_encoder(
        args.encoder,
        device=resolve_device(args.device),
        pooling=args.pooling,
        last_blocks=args.last_blocks,
    )
    table = open_inputs(args.inputs)
    # the encoder is already on its device
    summary = write_embeddings(
        encoder, table, args.out, frames=args.frames, **run_args(args, without=("device",))
    )
    frames = f" and frame embeddings in {args.out}/frames/" if summary.frames else ""
    skipped = f", skipped {len(summary.skipped)} (see embed.json)" if summary.skipped else ""
    print(
        f"wrote {summary.clips} clip embeddings [{summary.clips}, {summary.embed_dim}] to "
        f"{args.out}/embeddings.npy{frames} in {summary.seconds:.1f} s{skipped}\n"
        f"  rows: {args.out}/clips.csv"
    )
    return 0


def add_evaluate_parser(sub) -> argparse.ArgumentParser:
    """``fastspec evaluate ENCODER DATA``; its handler is :func:`cmd_evaluate`."""
    p = add_command(
        sub,
        "evaluate",
        "linear probe / fine-tuning of an encoder, against two baselines",
        "Evaluate an exported encoder on a labelled dataset: a linear probe on frozen "
        "embeddings and/or fine-tuning, next to two baselines (log-mel mean+std pooling "
        "and a randomly initialised encoder of the same architecture). DATA: "
        "esc50:ROOT (5-fold CV), speechcommands:ROOT (train/validation/test), "
        "audioset:SEGMENTS.csv?audio=DIR (multi-label, mAP; tested on --test-data or "
        "eval_segments.csv beside it), a folder of class folders (k-fold CV, or its "
        "train/ and test/ subfolders), or a manifest with a label column. Prints a table "
        "and writes a JSON report.",
        handler=cmd_evaluate,
    )
    add_encoder_arg(p)
    p.add_argument("data", help="the labelled dataset (see above)")
    p.add_argument("--test-data", help="test clips (then DATA is the training set)")
    p.add_argument("--val-data", help="validation clips (with --test-data)")
    p.add_argument(
        "--mode", choices=["linear", "finetune", "both"], default="linear", help="what to run"
    )
    p.add_argument("--folds", type=int, default=5, help="k of k-fold CV for unsplit data")
    p.add_argument(
        "--shots",
        type=int,
        help="low-shot: train on K clips per class (unsplit data: --folds draws of K per "
        "class, each tested on all other clips; split data: K of each split's training clips)",
    )
    p.add_argument("--out", help="JSON report path (default: eval-<dataset>.json)")
    add_run_args(p)
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


@reports_errors("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> int:
    """``fastspec evaluate ENCODER DATA``: :func:`fastspec.evaluate.evaluate` and its report."""
    from fastspec.evaluate import EvalSettings, FinetuneSettings, evaluate, open_task

    # each --ft-X flag sets the field X of the plain fine-tuning recipe
    schedule = {key[3:]: value for key, value in vars(args).items() if key.startswith("ft_")}
    finetune = FinetuneSettings(**schedule, seed=args.seed)
    settings = EvalSettings(
        modes=("linear", "finetune") if args.mode == "both" else (args.mode,),
        seed=args.seed,
        pooling=args.pooling,
        last_blocks=args.last_blocks,
        finetune=finetune,
        **run_args(args),
    )
    task = open_task(
        args.data,
        test_data=args.test_data,
        val_data=args.val_data,
        folds=args.folds,
        seed=args.seed,
        shots=args.shots,
    )
    report = evaluate(args.encoder, task, settings)
    default = "eval-" + re.sub(r"[^A-Za-z0-9]+", "-", task.name).strip("-").lower() + ".json"
    print(report.table())
    print(f"report: {report.save(args.out or default)} ({report.seconds:.1f} s)")
    return 0
