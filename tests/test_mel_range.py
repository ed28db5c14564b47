"""MaskSpec's training augmentation: a random Kaldi mel range per clip (``frontend.mel_range``).

Checked against the float64 NumPy re-implementation of the reference's ``AugmentMelSTFT``
(``tests/test_paper_presets.py``) at each clip's own range, in the training loop too.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from fastspec.kernels.reference import kaldi_mel_banks
from test_paper_presets import SR32, _signal, maskspec_np

from fastspec.frontend import get_preset
from fastspec.frontend.mel_range import (
    check_mel_range_jitter,
    draw_mel_ranges,
    logmel_mel_range,
)
from fastspec.masking.clip_rng import ClipRng, uniform_rows
from fastspec.recipes.maskspec import MaskSpec
from fastspec.train import apply_override, default_config, pretrain
from fastspec.train.build import check_mel_range_jitter_setting
from fastspec.train.config import ConfigError

JITTER = (10, 2000)  # the reference's fmin_aug_range, fmax_aug_range


def test_a_filter_bank_per_clip_equals_one_bank_per_range():
    f_min, f_max = torch.tensor([0.0, 7.0, 9.0]), torch.tensor([15000.0, 14001.0, 16000.0])
    banks = kaldi_mel_banks(128, 1024, SR32, f_min, f_max, dtype=torch.float64)
    assert banks.shape == (3, 513, 128)
    for b in range(3):
        one = kaldi_mel_banks(
            128, 1024, SR32, float(f_min[b]), float(f_max[b]), dtype=torch.float64
        )
        torch.testing.assert_close(banks[b], one, rtol=0, atol=0)


def test_draws_are_the_references_integers():
    """f_min + randint(10) and f_max + 1000 - randint(2000): every value, nothing else."""
    cfg = get_preset("maskspec")
    u = (torch.arange(20_000, dtype=torch.float64)[:, None] + 0.5) / 20_000  # an even grid
    f_min, f_max = draw_mel_ranges(u.expand(-1, 2), cfg, JITTER)
    assert sorted(set(f_min.tolist())) == [float(v) for v in range(10)]
    assert sorted(set(f_max.tolist())) == [float(v) for v in range(14_001, 16_001)]
    unchanged = draw_mel_ranges(u.expand(-1, 2), cfg, (0, 0))
    assert set(unchanged[0].tolist()) == {0.0} and set(unchanged[1].tolist()) == {15000.0}


@pytest.mark.parametrize("kind", ["noise", "chirp", "tone"])
def test_each_clip_gets_the_reference_features_of_its_own_range(kind):
    rng = np.random.default_rng(3)
    mean, std = rng.normal(-6.0, 2.0, 128), rng.uniform(0.5, 3.0, 128)
    cfg = get_preset("maskspec", norm_mean_bins=mean, norm_std_bins=std)
    waves = np.stack([_signal(kind, SR32 // 4, SR32, seed=s) for s in range(3)])
    lengths = torch.tensor([SR32 // 4, SR32 // 4 - 999, SR32 // 8])
    f_min, f_max = torch.tensor([9.0, 0.0, 4.0]), torch.tensor([14001.0, 16000.0, 15321.0])
    got = logmel_mel_range(torch.from_numpy(waves), lengths, cfg, f_min, f_max).numpy()
    for b in range(3):
        n = int(lengths[b])
        want = maskspec_np(waves[b, :n], mean, std, low=float(f_min[b]), high=float(f_max[b]))
        err = np.abs(got[b, : len(want)] - want)
        assert err.mean() <= 1e-5 and err.max() <= 2e-3, (b, err.mean(), err.max())
        assert (got[b, len(want) :] == 0).all()  # frames past the clip stay 0


def _maskspec_run(tmp_path, *overrides):
    cfg = default_config("maskspec", demo=True)
    for item in ("data.sample_rate=32000", "frontend.preset=maskspec", "train.steps=1",
                 "train.batch_size=3", "data.demo_clips=6", "data.clip_seconds=0.5",
                 "train.amp=none", "train.device=cpu", "train.progress=false",
                 f"out={tmp_path / 'run'}", *overrides):  # fmt: skip
        apply_override(cfg, item)
    return cfg


def test_the_loop_featurises_each_clip_at_its_keyed_range(tmp_path, monkeypatch):
    seen = {}
    forward = MaskSpec.forward

    def spy(self, mel, generator=None, frame_lengths=None):
        seen["mel"] = mel.clone()
        return forward(self, mel, generator, frame_lengths)

    monkeypatch.setattr(MaskSpec, "forward", spy)
    captured = {}
    real = logmel_mel_range

    def spy_features(wave, lengths, cfg, f_min, f_max, **kw):
        captured.update(wave=wave.clone(), f_min=f_min, f_max=f_max)
        return real(wave, lengths, cfg, f_min, f_max, **kw)

    monkeypatch.setattr("fastspec.train.loop.logmel_mel_range", spy_features)
    cfg = _maskspec_run(tmp_path, "frontend.mel_range_jitter=[10,2000]")
    pretrain(cfg)
    # the ranges are the clips' own keyed draws (seed 0, step 0, clips 0..2), the first draws
    # of each clip's stream, made before its masks
    u = uniform_rows(ClipRng.for_clips(0, 0, 0, 3, torch.device("cpu")), (3, 2), "cpu")
    f_min, f_max = draw_mel_ranges(u, get_preset("maskspec"), JITTER)
    torch.testing.assert_close(captured["f_min"], f_min)
    torch.testing.assert_close(captured["f_max"], f_max)
    assert len(set(f_max.tolist())) == 3  # three clips, three ranges
    for b in range(3):  # what the recipe saw: the reference's features at that clip's range
        wave = captured["wave"][b].numpy()
        want = maskspec_np(wave, low=float(f_min[b]), high=float(f_max[b]))
        err = np.abs(seen["mel"][b, : len(want)].numpy() - want)
        assert err.max() <= 2e-3, err.max()


def test_bad_mel_range_settings_stop_before_training(tmp_path):
    ok = _maskspec_run(tmp_path, "frontend.mel_range_jitter=[10,2000]")
    check_mel_range_jitter_setting(ok)
    with pytest.raises(ConfigError, match="above Nyquist"):
        check_mel_range_jitter_setting(
            _maskspec_run(tmp_path, "frontend.mel_range_jitter=[10,2002]")
        )
    with pytest.raises(ConfigError, match="Kaldi mel banks"):
        atst = ["frontend.preset=atst", "frontend.n_mels=64", "data.sample_rate=16000"]
        cfg = _maskspec_run(tmp_path, *atst, "frontend.mel_range_jitter=[10,0]")
        check_mel_range_jitter_setting(cfg)
    asit = default_config("asit", demo=True)
    apply_override(asit, "frontend.mel_range_jitter=[10,0]")
    with pytest.raises(ConfigError, match="cuts from the waveform"):
        check_mel_range_jitter_setting(asit)
    with pytest.raises(ConfigError, match="mel_range_jitter"):
        apply_override(default_config("maskspec"), "frontend.mel_range_jitter=[-1,0]")
    with pytest.raises(ValueError, match="close up"):
        check_mel_range_jitter(dataclasses.replace(get_preset("maskspec"), f_max=100.0), (200, 0))
