"""The typed config tree: defaults, typed overrides, rejection of bad keys and values."""

import json

import pytest

from fastspec.train.config import Config, ConfigError, apply_override, default_config


def test_demo_and_paper_defaults_differ_where_time_matters():
    demo, paper = default_config(demo=True), default_config(demo=False)
    assert demo.model.name == "vit_mini_patch16"
    assert paper.model.name == "vit_base_patch16"
    # MaskSpec / Audio-MAE settings on real data
    assert (paper.model.decoder_dim, paper.model.decoder_depth) == (512, 8)
    assert paper.masking.ratio == 0.75 and paper.frontend.n_mels == 128
    # MaskSpec's input: 32 kHz, its own front end, 992 frames (9.91 s with centred framing)
    assert (paper.data.sample_rate, paper.frontend.preset) == (32000, "maskspec")
    assert paper.data.clip_seconds == pytest.approx(9.91)
    assert (demo.data.sample_rate, demo.frontend.preset) == (16000, "kaldi")


@pytest.mark.parametrize(
    "assignment, getter, expected",
    [
        ("optim.blr=3e-4", lambda c: c.optim.blr, 3e-4),
        ("train.steps=7", lambda c: c.train.steps, 7),
        ("train.compile=true", lambda c: c.train.compile, True),
        ("train.compile=0", lambda c: c.train.compile, False),
        ("optim.lr=none", lambda c: c.optim.lr, None),
        ("optim.lr=0.01", lambda c: c.optim.lr, 0.01),
        ("optim.betas=0.8,0.9", lambda c: c.optim.betas, (0.8, 0.9)),
        ("data.source=/x/y.csv", lambda c: c.data.source, "/x/y.csv"),
        ("masking.ratio=0.8", lambda c: c.masking.ratio, 0.8),
    ],
)
def test_override_parses_by_field_type(assignment, getter, expected):
    cfg = default_config()
    apply_override(cfg, assignment)
    assert getter(cfg) == expected
    assert type(getter(cfg)) is type(expected)


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("optim.blrr=1", "unknown config key 'optim.blrr'"),
        ("nope=1", "unknown config key 'nope'"),
        ("train.steps=ten", "not a valid int"),
        ("train.compile=maybe", "not a valid bool"),
        ("masking.ratio=1.5", "masking.ratio"),
        ("train.amp=fp8", "train.amp"),
        ("optim.betas=0.9", "2 comma-separated values"),
        ("optim", "not of the form key=value"),
        ("model=3", "is a section"),
        ("model.decoder_heads=5", "divisible"),
    ],
)
def test_bad_overrides_are_rejected_with_the_key_named(assignment, message):
    with pytest.raises(ConfigError, match=message):
        apply_override(default_config(), assignment)


def test_unknown_key_error_lists_valid_keys():
    with pytest.raises(ConfigError, match="blr"):
        apply_override(default_config(), "optim.learning_rate=1")


def test_round_trip_through_json():
    cfg = default_config()
    apply_override(cfg, "optim.betas=0.7,0.8")
    back = Config.from_dict(json.loads(cfg.to_json()))
    assert back == cfg


def test_from_dict_rejects_unknown_keys():
    d = default_config().to_dict()
    d["train"]["stepz"] = 3
    with pytest.raises(ConfigError, match="train.stepz"):
        Config.from_dict(d)


def test_derived_lr_follows_the_mae_rule():
    cfg = default_config(demo=False)
    apply_override(cfg, "train.batch_size=32")
    apply_override(cfg, "optim.accum_steps=4")
    assert cfg.effective_batch == 128
    assert cfg.abs_lr == pytest.approx(cfg.optim.blr * 128 / 256)
    apply_override(cfg, "optim.lr=0.002")
    assert cfg.abs_lr == 0.002
