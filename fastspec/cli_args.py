"""Argument helpers the ``fastspec`` subcommands share (``cli``, ``commands``,
``finetune.command``).

Torch-free, as is every module that registers a subcommand: ``fastspec --help`` and argument
errors answer without importing torch; each handler imports what it runs.
"""

from __future__ import annotations

import argparse
import functools
import sys

__all__ = [
    "USER_ERRORS",
    "add_command",
    "add_encoder_arg",
    "add_pooling_args",
    "add_run_args",
    "report_error",
    "reports_errors",
    "run_args",
]

# what a user's input can cause: a bad value, file or data source (DataError and ConfigError are
# ValueErrors), or a run that diverged; each ends in one line, not a traceback
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)

ENCODER_HELP = "run directory, encoder.safetensors or encoder.json"


def add_command(
    sub, name: str, summary: str, description: str, *, handler, raw: bool = False
) -> argparse.ArgumentParser:
    """Subcommand ``name`` on the subparsers ``sub``, run by ``handler(args) -> exit status``:
    ``summary`` in ``fastspec --help``, ``description`` in its own help (kept as written with
    ``raw``)."""
    formatter = argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter
    p = sub.add_parser(name, help=summary, description=description, formatter_class=formatter)
    p.set_defaults(func=handler)
    return p


def add_encoder_arg(p: argparse.ArgumentParser) -> None:
    """The positional ``encoder``: an exported encoder (:func:`fastspec.load_encoder`)."""
    p.add_argument("encoder", help=ENCODER_HELP)


def add_run_args(
    p: argparse.ArgumentParser, *, amp: str = "auto", batch_size: int | None = 16
) -> None:
    """``--device``, ``--amp`` (default ``amp``), ``--workers`` and, unless ``batch_size`` is
    None, ``--batch-size`` (clips per forward pass) of a command that runs an encoder."""
    if batch_size is not None:
        p.add_argument("--batch-size", type=int, default=batch_size, help="clips per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=["auto", "bf16", "none"], default=amp, help="autocast")
    p.add_argument("--workers", type=int, default=2, help="decoding threads")


def run_args(args: argparse.Namespace, *, without: tuple[str, ...] = ()) -> dict:
    """The options :func:`add_run_args` added, by name, as keyword arguments of the function
    the command calls: ``batch_size``, ``device``, ``amp``, ``workers``, less those named in
    ``without`` (``batch_size`` where the command's ``--batch-size`` means something else)."""
    names = ("batch_size", "device", "amp", "workers")
    return {name: getattr(args, name) for name in names if name not in without}


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


def report_error(command: str, error: Exception, code: int = 2) -> int:
    """Print ``fastspec COMMAND: error: ...`` on stderr; returns the exit status ``code``."""
    print(f"fastspec {command}: error: {error}", file=sys.stderr)
    return code


def reports_errors(command: str):
    """Decorator of a handler: :data:`USER_ERRORS` become :func:`report_error` (exit status 2)."""

    def wrap(handler):
        @functools.wraps(handler)
        def run(args: argparse.Namespace) -> int:
            try:
                return handler(args)
            except USER_ERRORS as e:
                return report_error(command, e)

        return run

    return wrap
