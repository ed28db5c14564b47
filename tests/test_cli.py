"""The ``fastspec`` command: entry point, info, pretrain flags and overrides."""

import json
import shutil
import subprocess
import sys

import pytest

from fastspec.cli import build_config, main


def test_console_entry_point_is_installed():
    exe = shutil.which("fastspec")
    cmd = [exe] if exe else [sys.executable, "-m", "fastspec"]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, check=True)
    assert "pretrain" in out.stdout and "info" in out.stdout


# Builds the whole parser, renders every subcommand's help and parses a finetune command line
# (the --protocol choices come from the protocol table), then names any heavy module loaded.
NO_TORCH_SCRIPT = """
import sys
import fastspec.cli as cli
parser, commands = cli.build_parser()
parser.format_help()
for sub in commands.values():
    sub.format_help()
args = parser.parse_args(["finetune", "enc", "data", "--out", "o", "--protocol", "esc50"])
assert args.protocol == "esc50" and args.amp == "none", vars(args)
print(sorted(m for m in ("torch", "numpy", "fastspec.data") if m in sys.modules))
"""


def test_parser_is_built_without_torch():
    """``fastspec --help`` and argument errors answer without importing torch (about 2 s on
    the 2-core CPU): a fresh interpreter, so other tests' imports do not count."""
    run = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT], capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == "[]", run.stdout + run.stderr


def test_info_reports_versions_device_and_backends(capsys):
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["versions"]["torch"]
    assert {"frontend", "attention", "masking", "decode"} <= set(report["backends"])
    assert "vit_base_patch16" in report["models"]
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "backends" in text and "attention" in text


def _args(argv):
    import argparse

    from fastspec.cli import _pretrain_parser

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    _pretrain_parser(sub)
    return parser.parse_args(["pretrain", *argv])


def test_flags_then_overrides_build_the_config():
    cfg = build_config(
        _args(
            [
                "--steps",
                "12",
                "--amp",
                "none",
                "--model",
                "vit_tiny_patch16",
                "optim.blr=2e-4",
                "train.steps=13",
            ]
        )
    )
    assert cfg.train.steps == 13  # overrides come after flags
    assert cfg.train.amp == "none" and cfg.model.name == "vit_tiny_patch16"
    assert cfg.optim.blr == 2e-4
    assert cfg.data.source is None and cfg.model.decoder_depth == 2  # demo defaults


def test_data_flag_selects_the_paper_settings(tmp_path):
    cfg = build_config(_args(["--data", str(tmp_path)]))
    assert cfg.model.name == "vit_base_patch16" and cfg.model.decoder_depth == 8


def test_unknown_override_is_an_error_before_training(tmp_path, capsys):
    rc = main(["pretrain", "--out", str(tmp_path / "r"), "optim.nope=1"])
    assert rc == 2
    assert "unknown config key 'optim.nope'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_resume_needs_an_existing_run(tmp_path, capsys):
    assert main(["pretrain", "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
    assert main(["pretrain", "--resume", "--out", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


@pytest.mark.slow
def test_pretrain_command_runs_and_prints_where_it_saved(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "pretrain",
            "--amp",
            "bf16",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--no-progress",
            "data.demo_clips=16",
            "data.clip_seconds=1.0",
            "data.demo_clip_seconds=1.0",
            "train.log_every=1",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"saved to {out}" in printed and "load_encoder" in printed
    assert (out / "encoder.safetensors").is_file()


def test_overrides_are_accepted_anywhere_among_the_flags(monkeypatch):
    import fastspec.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "cmd_pretrain", lambda args: seen.update(vars(args)) or 0)
    assert main(["pretrain", "optim.blr=1e-3", "--steps", "10", "masking.ratio=0.8"]) == 0
    assert seen["steps"] == 10 and seen["overrides"] == ["optim.blr=1e-3", "masking.ratio=0.8"]
    cfg = build_config(argparse_namespace(seen))
    assert cfg.optim.blr == 1e-3 and cfg.masking.ratio == 0.8 and cfg.train.steps == 10
    with pytest.raises(SystemExit):  # anything else still is an unrecognised argument
        main(["pretrain", "optim.blr=1e-3", "--steps", "10", "--bogus"])


def argparse_namespace(values):
    import argparse

    return argparse.Namespace(**values)


def test_info_reads_as_a_report(capsys):
    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # sections, then aligned columns: every backend row names its variable and a reason
    assert lines[0] == "versions" and "device" in lines and "details" in lines
    rows = [line for line in lines if "FASTSPEC_" in line and "choices:" not in line]
    for variable in (
        "FASTSPEC_PRECISION",
        "FASTSPEC_FRONTEND_BACKEND",
        "FASTSPEC_ATTENTION",
        "FASTSPEC_MASKING",
        "FASTSPEC_PATCH_EMBED",
        "FASTSPEC_LOADER",
    ):
        assert any(variable in row for row in rows), variable
    starts = {row.index("FASTSPEC_") for row in rows}
    assert len(starts) == 1  # the variable column is aligned
    assert not any(line.lstrip().startswith("{") for line in lines)  # not a dict dump
