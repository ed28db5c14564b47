"""Manifests: CSV or JSON-lines files listing audio files, optionally with labels and segments."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastspec.data.audio import DataError

__all__ = ["ManifestRow", "read_manifest"]


@dataclass(frozen=True)
class ManifestRow:
    """One usable row of a manifest."""

    path: str  # as written (relative paths resolve against the manifest's folder)
    labels: tuple[str, ...] = ()  # label names, empty when the manifest has none
    offset: float = 0.0  # segment start in seconds
    duration: float | None = None  # segment length in seconds


def _number(value: Any, what: str) -> float | None:
    """A non-negative finite number from a manifest cell; None for an empty cell."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} {value!r} must be a finite number >= 0")
    return number


def _labels_of(value: Any) -> tuple[str, ...]:
    """Label names from a cell: a string (several separated by ``;``), a number, or a list."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(part.strip() for part in str(value).split(";") if part.strip())


def _row(record: dict[str, Any]) -> ManifestRow:
    """A manifest record (CSV row or JSON object) as a ManifestRow; ValueError if unusable."""
    path = record.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ValueError("missing: empty path" if isinstance(path, str) else "missing: no 'path'")
    label = record.get("label", record.get("labels"))
    return ManifestRow(
        path=path.strip(),
        labels=_labels_of(label),
        offset=_number(record.get("offset"), "offset") or 0.0,
        duration=_number(record.get("duration"), "duration"),
    )


def read_manifest(manifest: str | os.PathLike) -> tuple[list[ManifestRow], list[tuple[str, str]]]:
    """The rows of a CSV or JSON-lines manifest.

    A CSV needs a header row with a ``path`` column; a JSON-lines file holds one object per
    line with a ``"path"`` key. Optional columns / keys: ``label`` (or ``labels``; several
    labels separated by ``;`` in CSV, or a JSON list), ``offset`` and ``duration`` in seconds
    (use only that segment of the file). Header names are matched case-insensitively.

    Returns the usable rows and the rows that could not be used as ``(name, reason)``, where
    ``name`` is ``manifest.csv:LINE``.

    Raises:
        DataError: unreadable manifest, or no path column at all.
    """
    manifest = Path(manifest)
    rows: list[ManifestRow] = []
    bad_rows: list[tuple[str, str]] = []
    where = f"manifest {str(manifest)!r}"
    try:
        text = manifest.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from spreadsheets
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {where}: {err}") from None

    def add(record: dict[str, Any], line: int) -> None:
        try:
            rows.append(_row(record))
        except ValueError as err:
            reason = str(err)
            if not reason.startswith("missing"):
                reason = f"unreadable: {reason}"
            bad_rows.append((f"{manifest.name}:{line}", reason))

    if manifest.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        # header names compared case-insensitively and stripped: "Path", " path" both work
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "path" not in fields:
            raise DataError(
                f"{where} has no 'path' column in its header row (columns: {fields or 'none'})"
            )
        reader.fieldnames = fields
        for record in reader:
            add(record, reader.line_num)
        return rows, bad_rows

    saw_path_key = False
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as err:
            bad_rows.append((f"{manifest.name}:{line_no}", f"unreadable: invalid JSON ({err.msg})"))
            continue
        if not isinstance(record, dict):
            bad_rows.append((f"{manifest.name}:{line_no}", "missing: not a JSON object"))
            continue
        saw_path_key |= "path" in record
        add(record, line_no)
    if not saw_path_key and (rows or bad_rows):
        raise DataError(f"{where} has no object with a 'path' key")
    return rows, bad_rows
