"""``fastspec stats``: per-bin mean / std of un-normalised log-mel over every valid frame."""

import json

import numpy as np
import pytest
import torch

from fastspec.cli import main
from fastspec.data import DemoCorpus
from fastspec.frontend import LogMel, get_preset
from fastspec.stats import compute_stats


def test_stats_equal_numpy_over_each_clip_alone():
    cfg = get_preset("kaldi", sample_rate=32000, n_mels=32)
    stats = compute_stats("demo", cfg, max_clips=5, batch_size=2)
    corpus = DemoCorpus(num_clips=5, sample_rate=32000)
    logmel = LogMel.from_config(cfg, normalize=False)
    frames = []
    for i in range(5):
        wave = torch.from_numpy(corpus.load(i)[0])[None]
        frames.append(logmel(wave)[0].double().numpy())  # [T, F], one clip, no padding
    x = np.concatenate(frames)
    assert stats.clips == 5 and stats.frames == x.shape[0]
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats.std, x.std(axis=0), rtol=1e-6, atol=1e-7)


def test_cli_writes_the_file(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["stats", "demo", "--max-clips", "3", "--n-mels", "16", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "fastspec-stats" and doc["clips"] == 3
    assert len(doc["mean"]) == len(doc["std"]) == 16 == doc["frontend"]["n_mels"]
    assert all(s > 0 for s in doc["std"])


def test_bad_data_is_named(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "missing"), "--out", str(tmp_path / "x.json")]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="preset"):
        compute_stats("demo", get_preset("nope"))
