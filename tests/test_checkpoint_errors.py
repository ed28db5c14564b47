"""Checkpoints a user was handed: a file that is not a fastspec checkpoint ends in one line naming
it, and loading never runs code from it (``torch.load(weights_only=True)``)."""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch

from fastspec.train.checkpoint import CheckpointError, load_checkpoint


class _Payload:
    """Unpickling this runs code: it creates the file named by ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_object_is_refused_in_one_line_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "step_0000010.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload(str(marker))}, f, protocol=2)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a fastspec checkpoint: it holds pickled")
    assert "\n" not in message and info.value.__cause__ is None and info.value.__suppress_context__
    assert not marker.exists() and not os.path.exists("ran")

    torch.save({"model": {}, "config": argparse.Namespace(steps=3)}, path)  # torch.save'd too
    with pytest.raises(
        CheckpointError,
        match=r"pickled Python objects, which are never loaded \(argparse.Namespace\)",
    ):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"PK\x03\x04 cut short", "PytorchStreamReader failed reading zip archive"),
        (b"", "step_0000010.pt is not a fastspec checkpoint"),
    ],
    ids=["torn", "empty"],
)
def test_a_torn_file_is_named_in_one_line(tmp_path, content, reason):
    path = tmp_path / "step_0000010.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)  # what the command line reports as one line


def test_a_foreign_tensor_file_is_not_taken_for_a_checkpoint(tmp_path):
    path = tmp_path / "step_0000010.pt"
    torch.save({"weight": torch.zeros(2)}, path)  # loads fine, but holds no training state
    with pytest.raises(CheckpointError, match="is not a fastspec checkpoint: no 'step' entry"):
        load_checkpoint(path)


def test_a_checkpoint_of_another_model_is_named_in_one_line(tmp_path):
    """Resuming from weights that do not fit (here: a head bias this version does not have, as
    ATST checkpoints from before its bias-free heads) ends in one line naming the file."""
    from fastspec.train import apply_override, default_config, pretrain
    from fastspec.train.checkpoint import list_checkpoints

    cfg = default_config(demo=True)
    for item in ("data.demo_clips=16", "data.clip_seconds=0.5", "frontend.n_mels=64",
                 "model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2",
                 "train.batch_size=4", "train.steps=2", "train.ckpt_every=1",
                 "train.progress=false", f"out={tmp_path / 'run'}"):  # fmt: skip
        apply_override(cfg, item)
    pretrain(cfg)
    _, path = list_checkpoints(tmp_path / "run")[-1]
    state = torch.load(path, weights_only=True)
    state["model"]["decoder.pred.extra_bias"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        pretrain(cfg, resume=True)
    message = str(info.value)
    assert message.startswith(f"{path} does not fit this run's model and optimizer")
    assert "extra_bias" in message and "\n" not in message
