"""The training loop end to end on CPU: demo run, resume, export, failures that lose nothing."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from fastspec.models import create_model
from fastspec.recipes.maskspec import MaskSpec
from fastspec.train import ConfigError, NonFiniteLossError, apply_override, default_config, pretrain
from fastspec.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from fastspec.train.metrics import read_metrics
from fastspec.train.schedule import lr_at


def tiny_config(out, **overrides):
    """A demo config small enough for a few seconds per run on the 2-core CPU."""
    cfg = default_config(demo=True)
    settings = {
        "out": str(out),
        "data.demo_clips": 48,
        "data.demo_clip_seconds": 1.0,
        "data.clip_seconds": 1.0,
        "frontend.n_mels": 64,
        "model.decoder_dim": 64,
        "model.decoder_depth": 1,
        "model.decoder_heads": 4,
        "train.batch_size": 8,
        "train.steps": 6,
        "train.log_every": 1,
        "train.ckpt_every": 3,
        "train.progress": False,
        "optim.warmup_steps": 2,
    }
    settings.update(overrides)
    for key, value in settings.items():
        apply_override(cfg, f"{key}={value}")
    return cfg


def recipe_state(run_dir):
    step, path = list_checkpoints(run_dir)[-1]
    return step, load_checkpoint(path)["model"]


def test_demo_run_learns_and_fills_the_run_directory(tmp_path):
    cfg = tiny_config(
        tmp_path / "run",
        **{
            "train.steps": 40,
            "train.log_every": 5,
            "train.ckpt_every": 20,
            "data.demo_clips": 96,
            "train.amp": "bf16",
        },
    )
    result = pretrain(cfg)
    run = result.run_dir
    for name in ("config.json", "metrics.jsonl", "loss.png", "encoder.safetensors", "encoder.json"):
        assert (run / name).is_file(), name
    assert [s for s, _ in list_checkpoints(run)] == [20, 40]
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(5, 41, 5))
    for r in records:
        assert {"step", "loss", "lr", "clips_per_s"} <= set(r)
        assert math.isfinite(r["loss"]) and r["clips_per_s"] > 0
    # the loss must fall: the last logged value well under the first
    assert records[-1]["loss"] < 0.9 * records[0]["loss"], [r["loss"] for r in records]
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["steps"] == 40 and saved["train"]["amp"] == "bf16"


@pytest.mark.parametrize("accum", [1, 2])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, accum, same_state):
    opts = {"optim.accum_steps": accum, "optim.grad_clip": 1.0}
    full = pretrain(tiny_config(tmp_path / "full", **opts))
    part = tiny_config(tmp_path / "part", **opts, **{"train.stop_after": 3})
    first = pretrain(part)
    assert first.step == 3
    resumed = tiny_config(tmp_path / "part", **opts)
    second = pretrain(resumed, resume=True)
    assert second.step == 6 == full.step
    step_a, state_a = recipe_state(full.run_dir)
    step_b, state_b = recipe_state(second.run_dir)
    assert step_a == step_b == 6
    same_state(state_a, state_b)
    # the metrics of the resumed run continue the first half without duplicates
    steps = [r["step"] for r in read_metrics(second.run_dir / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_stop_after_belongs_to_one_invocation(tmp_path, caplog):
    """``--steps 6 train.stop_after=3`` then a plain ``--resume`` trains on to step 6 (the saved
    config.json has no stop_after), and one more ``--resume`` says there is nothing left."""
    from fastspec.cli import main

    out = tmp_path / "run"
    flags = ["pretrain", "--out", str(out), "--steps", "6", "--batch-size", "8", "--no-progress",
             "--amp", "none", "data.demo_clips=48", "data.demo_clip_seconds=1.0",
             "data.clip_seconds=1.0", "frontend.n_mels=64", "model.decoder_dim=64",
             "model.decoder_depth=1", "train.ckpt_every=3", "optim.warmup_steps=2"]  # fmt: skip
    assert main([*flags, "train.stop_after=3"]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["stop_after"] is None
    assert list_checkpoints(out)[-1][0] == 3
    assert main([*flags, "--resume"]) == 0
    assert list_checkpoints(out)[-1][0] == 6
    caplog.clear()
    assert main([*flags, "--resume"]) == 0
    assert "nothing left to do" in caplog.text
    assert list_checkpoints(out)[-1][0] == 6


def test_resume_without_checkpoint_and_overwrite_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        pretrain(tiny_config(tmp_path / "empty"), resume=True)
    pretrain(tiny_config(tmp_path / "run", **{"train.steps": 1}))
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        pretrain(tiny_config(tmp_path / "run", **{"train.steps": 1}))


def test_steps_zero_exports_the_initialised_encoder(tmp_path):
    cfg = tiny_config(tmp_path / "init", **{"train.steps": 0, "train.seed": 5})
    result = pretrain(cfg)
    assert result.step == 0 and result.encoder_path.is_file()
    from safetensors.torch import load_file

    exported = load_file(str(result.encoder_path))
    torch.manual_seed(5)  # the loop seeds, then builds the encoder first
    reference = create_model("vit_mini_patch16", n_mels=64).state_dict()
    assert exported.keys() == reference.keys()
    for key in reference:
        assert torch.equal(exported[key], reference[key]), key


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = default_config()
    for key, value in {
        "train.steps": 100,
        "optim.warmup_steps": 10,
        "optim.lr": 1.0,
        "optim.min_lr": 0.1,
    }.items():
        apply_override(cfg, f"{key}={value}")
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"step": 1, "w": torch.ones(3)}, keep=2)

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, {"step": 2, "w": torch.zeros(3)}, keep=2)
    # the earlier checkpoint is the last complete one, untouched, and no temporary file is left
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert torch.equal(load_checkpoint(list_checkpoints(tmp_path)[0][1])["w"], torch.ones(3))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_0000001.pt"]


def test_old_checkpoints_are_pruned_after_a_new_one_is_complete(tmp_path):
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]


def _nan_after(monkeypatch, n_calls):
    calls = {"n": 0}
    original = MaskSpec.forward_loss

    def forward_loss(self, target, pred, mask):
        calls["n"] += 1
        loss = original(self, target, pred, mask)
        return loss * float("nan") if calls["n"] > n_calls else loss

    monkeypatch.setattr(MaskSpec, "forward_loss", forward_loss)


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    _nan_after(monkeypatch, 4)  # steps 1-4 fine, step 5 NaN
    cfg = tiny_config(tmp_path / "nan", **{"train.ckpt_every": 2, "train.log_every": 1})
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        pretrain(cfg)
    step, path = list_checkpoints(tmp_path / "nan")[-1]
    assert step == 4
    state = load_checkpoint(path)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nonfinite_skip_mode_skips_the_step(tmp_path, monkeypatch):
    _nan_after(monkeypatch, 4)
    cfg = tiny_config(tmp_path / "skip", **{"train.nonfinite": "skip"})
    result = pretrain(cfg)
    assert result.step == 6
    state = load_checkpoint(list_checkpoints(result.run_dir)[-1][1])["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _write_clip(path, seconds, sr, channels=1, freq=440.0):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    sf.write(path, x.astype(np.float32), sr)


def test_real_folder_trains_with_bad_files_skipped_and_counted(tmp_path, caplog):
    data = tmp_path / "audio"
    (data / "sub").mkdir(parents=True)
    for i in range(6):
        _write_clip(data / f"a{i}.wav", 1.3, 16000, freq=200 + 50 * i)
    _write_clip(data / "sub" / "stereo.flac", 1.1, 22050, channels=2)
    # found bad when the folder is opened (its header), and only when loaded (its samples: a
    # good header, all zeros; sorted after the good files, so opening never decodes it)
    (data / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav file")
    sf.write(data / "z_silent.wav", np.zeros(16000, np.float32), 16000)
    cfg = tiny_config(
        tmp_path / "run", **{"data.source": str(data), "train.steps": 2, "train.batch_size": 4}
    )
    result = pretrain(cfg)
    assert result.step == 2
    assert "broken.wav" in caplog.text and "z_silent.wav: silent" in caplog.text
    # counted: both steps draw all 8 files of epoch 0 (2 batches of 4), so the silent one is
    # replaced within the run; the metrics count each unusable file once
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2]
    assert records[-1]["skipped_files"] == 2


def test_source_without_usable_audio_stops_before_training(tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    (data / "x.wav").write_bytes(b"nothing")
    (data / "y.flac").write_bytes(b"")
    cfg = tiny_config(tmp_path / "run", **{"data.source": str(data)})
    with pytest.raises(ValueError, match=str(data)):
        pretrain(cfg)
    assert not (tmp_path / "run").exists()  # nothing was started, nothing to clean up


def test_a_killed_run_resumes_from_its_last_complete_checkpoint(tmp_path):
    """SIGKILL at an arbitrary moment (mid-step or mid-write), then --resume finishes the run."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    args = [
        sys.executable, "-m", "fastspec", "pretrain", "--out", str(out), "--no-progress",
        "--steps", "400", "--batch-size", "4", "data.demo_clips=16", "data.clip_seconds=0.5",
        "data.demo_clip_seconds=0.5", "frontend.n_mels=64", "model.decoder_dim=64",
        "model.decoder_depth=1", "model.decoder_heads=4", "train.ckpt_every=1",
        "train.log_every=1",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(list_checkpoints(out)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert list_checkpoints(out), "the run wrote no checkpoint"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    step_killed, path = list_checkpoints(out)[-1]
    assert load_checkpoint(path)["step"] == step_killed  # the newest file is complete
    cfg = tiny_config(out, **{"data.demo_clips": 16, "data.clip_seconds": 0.5,
                              "data.demo_clip_seconds": 0.5, "train.batch_size": 4,
                              "train.steps": 400, "train.stop_after": step_killed + 2})  # fmt: skip
    result = pretrain(cfg, resume=True)
    assert result.step == step_killed + 2


@pytest.mark.slow
def test_compiled_run_trains(tmp_path):
    result = pretrain(tiny_config(tmp_path / "compiled", **{"train.compile": True,
                                                            "train.steps": 2}))  # fmt: skip
    assert result.step == 2 and math.isfinite(result.final_loss)


class _ProbeRecipe(torch.nn.Module):
    """A minimal recipe that records the loop's hook calls and reports extra scalars."""

    calls: list = []

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.embed_dim, 1)
        self.teacher_w = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, mel, generator=None, frame_lengths=None):
        tokens = self.encoder.forward_features(self.encoder.pad_frames(mel))
        loss = self.head(tokens[:, 0]).pow(2).mean()
        return {"loss": loss, "probe_stat": torch.tensor(2.0, device=mel.device)}

    def before_step(self, step, total):
        self.calls.append(("before", step, total))

    def after_step(self, step, total):
        self.calls.append(("after", step, total))
        self.teacher_w.add_(1.0)  # stands for an EMA update: must reach the checkpoint

    def health(self, stats):
        return [f"probe health {stats['probe_stat']:.1f}"]

    def train_flops_per_clip(self, n_frames):
        return 1.0


def test_recipe_hooks_stats_and_weight_decay_schedule(tmp_path, caplog, monkeypatch):
    from fastspec.recipes import register_recipe, unregister_recipe

    register_recipe("probe", _ProbeRecipe)
    _ProbeRecipe.calls = []
    try:
        cfg = tiny_config(tmp_path / "probe", **{"recipe": "probe", "train.steps": 4,
                                                 "train.log_every": 2, "train.ckpt_every": 4,
                                                 "optim.weight_decay": 0.04,
                                                 "optim.weight_decay_end": 0.4})  # fmt: skip
        result = pretrain(cfg)
    finally:
        unregister_recipe("probe")
    assert _ProbeRecipe.calls == [(k, s, 4) for s in range(4) for k in ("before", "after")]
    records = read_metrics(result.run_dir / "metrics.jsonl")
    assert [r["probe_stat"] for r in records] == [2.0, 2.0]
    assert "probe health 2.0" in caplog.text
    state = load_checkpoint(list_checkpoints(result.run_dir)[-1][1])["model"]
    assert state["teacher_w"].item() == 4.0  # the teacher is checkpointed, not optimised


def test_weight_decay_schedule_is_a_cosine_to_the_end_value():
    from fastspec.train.schedule import weight_decay_at

    cfg = default_config()
    for key, value in {"train.steps": 11, "optim.weight_decay": 0.04,
                       "optim.weight_decay_end": 0.4}.items():  # fmt: skip
        apply_override(cfg, f"{key}={value}")
    values = [weight_decay_at(s, cfg) for s in range(11)]
    assert values[0] == pytest.approx(0.04) and values[-1] == pytest.approx(0.4)
    assert values[5] == pytest.approx(0.22)
    assert all(a < b for a, b in zip(values, values[1:]))
    apply_override(cfg, "optim.weight_decay_end=none")
    assert weight_decay_at(7, cfg) == 0.04


def test_maskspec_with_a_mast_encoder_trains_and_exports(tmp_path):
    from fastspec.encoder import load_encoder

    cfg = tiny_config(tmp_path / "mast", **{"model.name": "mast_mini", "train.steps": 3})
    result = pretrain(cfg)
    assert result.step == 3 and math.isfinite(result.final_loss)
    enc = load_encoder(result.run_dir)
    assert enc(0.1 * torch.randn(2, 16000)).shape == (2, enc.embed_dim)
