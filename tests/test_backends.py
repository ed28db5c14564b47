"""The one backend helper (fastspec.backends): environment overrides, errors listing the choices,
one-line fallback notices, the report ``fastspec info`` prints, and the precision decision."""

from __future__ import annotations

import json

import pytest
import torch

from fastspec import _logging, backends
from fastspec.backends import BackendError, choose_precision, decide

# every piece the data path chooses a backend for, and its variable (the names users know)
PIECES = {
    "precision": "FASTSPEC_PRECISION",
    "frontend": "FASTSPEC_FRONTEND_BACKEND",
    "masking": "FASTSPEC_MASKING",
    "patch_embed": "FASTSPEC_PATCH_EMBED",
    "attention": "FASTSPEC_ATTENTION",
    "loader": "FASTSPEC_LOADER",
}


@pytest.fixture
def all_pieces():
    # importing the packages registers their pieces
    import fastspec.data  # noqa: F401
    import fastspec.frontend  # noqa: F401
    import fastspec.masking  # noqa: F401
    import fastspec.models  # noqa: F401

    return backends.pieces()


@pytest.fixture
def fresh_notices(monkeypatch):
    monkeypatch.setattr(_logging, "_seen", {})
    for env in PIECES.values():
        monkeypatch.delenv(env, raising=False)


def test_every_piece_is_registered_with_its_variable(all_pieces):
    assert {name: piece.env for name, piece in all_pieces.items()} == PIECES


@pytest.mark.parametrize("name", list(PIECES))
def test_a_bad_environment_value_is_an_error_listing_the_choices(name, all_pieces, monkeypatch):
    piece = all_pieces[name]
    monkeypatch.setenv(piece.env, "fastest")
    with pytest.raises(BackendError) as info:
        decide(name, "cpu")
    message = str(info.value)
    assert f"{piece.env}='fastest'" in message
    assert all(choice in message for choice in piece.choices)
    # fastspec info still prints, and shows the error where the backend would be
    assert backends.report()[name]["cpu"]["backend"] == "error"


@pytest.mark.parametrize("name", list(PIECES))
def test_the_environment_replaces_the_request(name, all_pieces, monkeypatch):
    piece = all_pieces[name]
    forced = "none" if name == "precision" else "torch" if "torch" in piece.choices else "sdpa"
    monkeypatch.setenv(piece.env, forced)
    assert backends.requested(name, piece.choices[-1]) == (forced, True)


def test_report_is_json_safe_and_gives_reasons(all_pieces, fresh_notices):
    report = json.loads(json.dumps(backends.report()))
    assert set(report) == set(PIECES)
    for entry in report.values():
        assert entry["cpu"]["backend"] and entry["cpu"]["reason"]
    assert _logging.notices() == {}  # a report announces nothing


# ---- precision ----------------------------------------------------------------------------------


def test_bf16_on_a_cpu_without_native_bf16_trains_in_float32_with_one_line(
    monkeypatch, fresh_notices
):
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)
    assert choose_precision("bf16", "cpu") == "none"
    assert choose_precision("bf16", "cpu") == "none"
    notice = _logging.notices()["precision.cpu_bf16"]
    assert "no native bf16" in notice and "float32" in notice and "FASTSPEC_PRECISION" in notice
    assert len(_logging.notices()) == 1
    assert backends.report()["precision"]["cpu"]["backend"] == "none"  # fastspec info says it


def test_bf16_on_a_cpu_with_native_bf16_keeps_bf16(monkeypatch, fresh_notices):
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True)
    assert choose_precision("bf16", "cpu") == "bf16"
    assert _logging.notices() == {}


def test_precision_can_be_forced_and_other_requests_are_kept(monkeypatch, fresh_notices):
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setenv("FASTSPEC_PRECISION", "bf16")
    assert choose_precision("none", "cpu") == "bf16"  # forced, emulated: the user asked
    monkeypatch.setenv("FASTSPEC_PRECISION", "none")
    assert choose_precision("bf16", "cuda") == "none"
    monkeypatch.delenv("FASTSPEC_PRECISION")
    assert choose_precision("none", "cpu") == "none"
    assert choose_precision("bf16", "cuda") == "bf16"
    assert choose_precision("fp16", "cuda") == "fp16"


def test_the_capability_check_reads_onednn():
    assert backends.cpu_has_native_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_pretrain_takes_the_precision_decision(monkeypatch, fresh_notices, tmp_path):
    from fastspec.cli import main

    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)
    assert main(["pretrain", "--amp", "bf16", "--steps", "0", "--out", str(tmp_path / "r")]) == 0
    assert "no native bf16" in _logging.notices()["precision.cpu_bf16"]
