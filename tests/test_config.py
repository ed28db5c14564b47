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
    # MaskSpec's input: 32 kHz, its own front end, 992 frames (9.92 s pre-emphasised, centred)
    assert (paper.data.sample_rate, paper.frontend.preset) == (32000, "maskspec")
    assert paper.data.clip_seconds == pytest.approx(9.92)
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


@pytest.mark.parametrize("world, accum", [(1, 8), (2, 4), (4, 2)])
def test_global_batch_sets_accumulation_for_the_world(monkeypatch, world, accum):
    import fastspec.train.config as config

    monkeypatch.setattr(config, "world_size", lambda: world)
    cfg = default_config("maskspec", demo=True)
    apply_override(cfg, "train.batch_size=8")
    apply_override(cfg, "train.global_batch=64")
    config.resolve_counts(cfg, n_clips=640)
    assert cfg.optim.accum_steps == accum
    assert cfg.effective_batch == 64


def test_global_batch_that_does_not_divide_is_an_error(monkeypatch):
    import fastspec.train.config as config

    monkeypatch.setattr(config, "world_size", lambda: 3)
    cfg = default_config("maskspec", demo=True)
    apply_override(cfg, "train.batch_size=8")
    apply_override(cfg, "train.global_batch=64")
    with pytest.raises(ConfigError, match="train.global_batch=64 is not a multiple of"):
        config.resolve_counts(cfg, n_clips=640)


def test_epochs_and_warmup_epochs_count_passes_by_the_global_batch():
    from fastspec.train.config import resolve_counts

    cfg = default_config("maskspec", demo=True)
    for assignment in ("train.batch_size=10", "train.global_batch=40", "train.epochs=3",
                       "optim.warmup_epochs=0.5"):  # fmt: skip
        apply_override(cfg, assignment)
    resolve_counts(cfg, n_clips=1000)  # 25 steps per pass
    assert (cfg.optim.accum_steps, cfg.train.steps, cfg.optim.warmup_steps) == (4, 75, 13)


@pytest.mark.parametrize("name", ["vit_mini_patch16", "mast_mini"])
def test_encoder_settings_reach_every_encoder(name):
    from fastspec.train.build import make_recipe

    cfg = default_config("maskspec", demo=True)
    for assignment in (f"model.name={name}", "model.pos_embed=learned", "model.max_frames=400",
                       "model.qkv_bias=false", "model.drop_path=0.1"):  # fmt: skip
        apply_override(cfg, assignment)
    encoder = make_recipe(cfg, "cpu").encoder
    assert encoder.pos_embed == "learned" and encoder.max_frames == 400
    assert encoder.pos_table is not None
    assert encoder.arch_config()["qkv_bias"] is False
    assert encoder.arch_config()["drop_path_rate"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("model.pos_embed=rope", "model.pos_embed"),
        ("model.drop_path=1.0", "model.drop_path"),
        ("train.global_batch=0", "train.global_batch"),
        ("optim.warmup_epochs=-1", "optim.warmup_epochs"),
    ],
)
def test_bad_encoder_and_count_settings_name_the_key(assignment, message):
    cfg = default_config("maskspec", demo=True)
    with pytest.raises(ConfigError, match=message):
        apply_override(cfg, assignment)
