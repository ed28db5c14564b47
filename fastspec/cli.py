"""The ``fastspec`` command: ``pretrain`` and ``info``.

``fastspec pretrain`` with no arguments trains the default recipe on the built-in demo corpus
(about a minute on a 2-core CPU); ``--data PATH`` trains on real audio with the paper's settings.
Flags set the common fields; any config field can be set as a typed ``key.sub=value`` override
(``fastspec pretrain optim.blr=3e-4 masking.ratio=0.8``); unknown keys are an error.
"""

from __future__ import annotations

import argparse
import json
import sys

from fastspec import __version__


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
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the blocks")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, help="data loader worker processes")
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
    from fastspec.train import ConfigError, NonFiniteLossError, pretrain

    try:
        cfg = build_config(args)
        result = pretrain(cfg, resume=args.resume)
    except (ConfigError, NonFiniteLossError) as e:
        print(f"fastspec pretrain: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # bad data source, bad model name: named in the message
        print(f"fastspec pretrain: error: {e}", file=sys.stderr)
        return 2
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    print(
        f"saved to {result.run_dir}  (step {result.step}, last loss {loss}, "
        f"{result.seconds:.1f} s)\n  encoder: {result.encoder_path}\n"
        f"  load it with: fastspec.load_encoder({str(result.run_dir)!r})"
    )
    return 0


def info() -> dict:
    """Versions, the device, and the backend each stage of the data path will use."""
    import os
    import platform

    import torch

    from fastspec._logging import notices
    from fastspec.frontend import backend_report
    from fastspec.models import list_models
    from fastspec.models.attention import attention_report

    def version(module: str) -> str:
        try:
            mod = __import__(module, fromlist=["__version__"])
            return getattr(mod, "__version__", "installed")
        except Exception:
            return "not installed"

    cuda = torch.cuda.is_available()
    device = {
        "cuda": cuda,
        "name": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    versions = {
        "fastspec": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": version("triton"),
        "flash_attn": version("flash_attn"),
        "nvidia.dali": version("nvidia.dali"),
        "numpy": version("numpy"),
        "soundfile": version("soundfile"),
        "safetensors": version("safetensors"),
    }
    try:
        import fastspec._C  # noqa: F401

        ext = "built"
    except ImportError:
        ext = "not built (the C++ front end arrives with the front-end issue)"
    backends = {
        "frontend": backend_report(),
        "attention": attention_report(),
        "masking": "torch (device RNG, no host sync)",
        "decode": "soundfile in DataLoader workers",
        "cpp_extension": ext,
    }
    return {
        "versions": versions,
        "device": device,
        "backends": backends,
        "models": list_models(),
        "fallback_notices": notices(),
    }


def cmd_info(args: argparse.Namespace) -> int:
    report = info()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for section, values in report.items():
        print(f"{section}:")
        if isinstance(values, dict):
            for key, value in values.items():
                if isinstance(value, dict):
                    value = ", ".join(f"{k}={v}" for k, v in value.items())
                print(f"  {key:14s} {value}")
        else:
            print(f"  {', '.join(map(str, values))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastspec", description="fast audio SSL pretraining")
    parser.add_argument("--version", action="version", version=f"fastspec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _pretrain_parser(sub).set_defaults(func=cmd_pretrain)
    p_info = sub.add_parser("info", help="versions, device and the backend of each stage")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    p_info.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
