"""MAC counting (``fastspec info --macs``) and MAST's MAC target against ViT-B."""

import json

import pytest

from fastspec.cli import main
from fastspec.models import count_macs, create_model
from fastspec.models.macs import parse_input


def _vit_macs(n_tokens: int, dim: int, depth: int, patch_dim: int) -> int:
    """Analytic forward MACs of a ViT: patch embed, then per block (class token included)
    QKV + output projection 4 n d^2, MLP 8 n d^2, scores and weighted values 2 n^2 d."""
    n = n_tokens + 1
    return n_tokens * patch_dim * dim + depth * (12 * n * dim * dim + 2 * n * n * dim)


def test_vit_base_macs_match_the_analytic_count():
    # 1024 x 128 in 16 x 16 patches = 512 tokens; the attention matmuls must be counted too
    report = count_macs("vit_base_patch16", 1024, 128)
    assert report.macs == _vit_macs(512, 768, 12, 256)
    assert report.params == sum(p.numel() for p in create_model("vit_base_patch16").parameters())
    assert report.macs_by_module["blocks"] == _vit_macs(512, 768, 12, 256) - 512 * 256 * 768


@pytest.mark.parametrize("name", ["mast_tiny", "mast_base"])
@pytest.mark.parametrize("n_frames", [1024, 320])
def test_mast_macs_match_its_analytic_count(name, n_frames):
    report = count_macs(name, n_frames, 128)
    flops = create_model(name, device="meta").forward_flops(n_frames)
    assert 2 * report.macs == flops["patch_embed"] + flops["blocks"]
    assert sum(report.macs_by_stage) == report.macs_by_module["blocks"]


def test_mast_base_needs_at_most_a_fifth_of_vit_base_macs_with_fewer_parameters():
    mast = count_macs("mast_base", 1024, 128)
    vit = count_macs("vit_base_patch16", 1024, 128)
    assert mast.macs <= 0.2 * vit.macs, (mast.macs / 1e9, vit.macs / 1e9)
    assert mast.params < vit.params


def test_frames_are_padded_as_the_model_pads_them():
    padded = count_macs("mast_base", 1000, 128)
    assert padded.padded_frames == 1024 and padded.n_frames == 1000
    assert padded.macs == count_macs("mast_base", 1024, 128).macs


@pytest.mark.parametrize("text", ["1024", "1024x", "ax128", "0x128", "1024x128x3"])
def test_bad_input_is_named(text):
    with pytest.raises(ValueError, match="FRAMESxMELS"):
        parse_input(text)
    assert parse_input(" 1024X128 ") == (1024, 128)


def test_info_macs_command(capsys):
    assert main(["info", "--macs", "mast_base", "--input", "1024x128", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "mast_base" and report["input"] == "1024x128"
    assert report["macs"] == count_macs("mast_base").macs and len(report["macs_by_stage"]) == 4

    assert main(["info", "--macs", "mast_tiny", "--input", "500x64"]) == 0
    text = capsys.readouterr().out
    assert "padded to 512 frames" in text and "stage 4" in text and "params" in text


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--macs", "mast_huge"], "unknown model"),
        (["--macs", "mast_base", "--input", "1024x100"], "n_mels"),
        (["--input", "1024x128"], "needs --macs"),
    ],
    ids=["unknown-model", "mels-do-not-tile", "input-alone"],
)
def test_info_macs_errors(capsys, argv, match):
    assert main(["info", *argv]) == 2
    assert match in capsys.readouterr().err
