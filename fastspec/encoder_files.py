"""The files of an exported encoder: where they are and what their description says.

An export is ``encoder.safetensors`` (weights, with the description embedded in its header) and
``encoder.json`` (the same description); :func:`locate` finds both from what a user hands over
(a run directory, either file, a renamed pair) and :func:`read_description` reads and checks the
description. Only JSON and safetensors headers are read: no pickle, no code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from fastspec import __version__

FORMAT = "fastspec-encoder"
FORMAT_VERSION = 1
# key of the encoder description in the safetensors header metadata (a JSON string), so that a
# lone (even renamed) .safetensors file is a complete encoder, e.g. for HEAR's load_model(path)
METADATA_KEY = "fastspec_encoder"
REQUIRED_KEYS = ("model_name", "model_config", "frontend")
NOT_AN_ENCODER_HINT = (
    "expected a fastspec run directory, its encoder.safetensors, or encoder.json (written by "
    "`fastspec pretrain` or fastspec.encoder.export_encoder)"
)


def locate(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(weights, description JSON or None) for what ``load_encoder`` was given."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no fastspec encoder at {path}: it does not exist")
    if p.is_dir():
        weights = p / "encoder.safetensors"
        if not weights.is_file():
            found = "checkpoints but no exported encoder (the run has not finished)"
            has_ckpt = (p / "checkpoints").is_dir()
            raise FileNotFoundError(
                f"no fastspec encoder at {path}: {weights.name} is missing"
                + (f"; the folder holds {found}" if has_ckpt else "")
                + f"; {NOT_AN_ENCODER_HINT}"
            )
        return weights, (p / "encoder.json") if (p / "encoder.json").is_file() else None
    if p.suffix == ".json":
        weights = p.with_name("encoder.safetensors")
        if p.stem != "encoder" and p.with_suffix(".safetensors").is_file():
            weights = p.with_suffix(".safetensors")  # a renamed pair: NAME.json + NAME.safetensors
        if not weights.is_file():
            raise FileNotFoundError(f"no fastspec encoder at {path}: {weights} is missing")
        return weights, p
    if p.suffix != ".safetensors":
        pickled = ""
        if p.suffix in (".pt", ".pth", ".ckpt", ".bin", ".pkl"):
            pickled = " (a pickled checkpoint? fastspec never unpickles a file)"
        raise ValueError(f"{path} is not a fastspec encoder{pickled}: {NOT_AN_ENCODER_HINT}")
    # NAME.json beside NAME.safetensors; otherwise the description embedded in the header
    meta = p.with_suffix(".json")
    return p, meta if meta.is_file() else None


def read_description(weights: Path, meta: Path | None) -> tuple[dict[str, Any], str]:
    """The encoder description (from ``meta``, else the weights' header) and where it came from."""
    if meta is not None:
        where = str(meta)
        try:
            cfg = json.loads(meta.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{meta} is not a fastspec encoder description: {e}") from None
    else:
        where = f"{weights} (header)"
        try:
            with safe_open(str(weights), framework="pt") as f:
                header = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{weights} is not a readable safetensors file: {e}") from None
        if METADATA_KEY not in header and weights.with_name("encoder.json").is_file():
            # an export from before the header carried the description, renamed in its folder
            return read_description(weights, weights.with_name("encoder.json"))
        if METADATA_KEY not in header:
            raise ValueError(
                f"{weights} is not a fastspec encoder: no encoder.json next to it and no "
                f"description in its header; {NOT_AN_ENCODER_HINT}"
            )
        try:
            cfg = json.loads(header[METADATA_KEY])
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} holds an unreadable encoder description: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ValueError(f"{where} is not a fastspec encoder description (no format={FORMAT!r})")
    if cfg.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{where} has format_version {cfg['format_version']}, newer than this fastspec "
            f"({__version__}) reads ({FORMAT_VERSION}); upgrade fastspec"
        )
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"{where} is an incomplete fastspec encoder description: no {missing}")
    return cfg, where


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "NOT_AN_ENCODER_HINT",
    "REQUIRED_KEYS",
    "locate",
    "read_description",
]
