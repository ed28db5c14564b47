"""The typed configuration tree of a pretraining run.

A run is described by one :class:`Config`: a dataclass tree with a docstring per field and checks
in ``__post_init__``. It is built in three layers, each overriding the last:

1. :func:`default_config` for the recipe: the paper's settings when training on real data
   (``--data``), or the small ``demo`` settings that finish in about a minute on a 2-core CPU when
   no data is given;
2. the command-line flags (``--model``, ``--steps``, ...);
3. ``key.sub=value`` overrides, parsed by the field's type; unknown keys are an error.

The resolved config, with derived values (effective batch, absolute learning rate), is printed at
start and written to ``config.json`` in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

AMP_MODES = ("bf16", "fp16", "none")


class ConfigError(ValueError):
    """A bad config value or key: raised before any training starts."""


@dataclass
class DataConfig:
    source: str | None = None
    """Audio to train on: a folder (WAV/FLAC/OGG, recursive), a .csv or .jsonl manifest with a
    ``path`` column, or None for the built-in synthetic demo corpus."""
    sample_rate: int = 16000
    """Rate the recipe works at; audio at other rates is resampled."""
    clip_seconds: float = 10.24
    """Length of the random crop taken from each clip (shorter clips are zero-padded)."""
    num_workers: int = 2
    """DataLoader worker processes (0 = load in the training process)."""
    demo_clips: int = 384
    """Number of clips of the demo corpus (only when ``source`` is None)."""
    demo_clip_seconds: float = 2.0
    """Length of each generated demo clip."""

    def __post_init__(self):
        _check(self.sample_rate > 0, "data.sample_rate", self.sample_rate, "must be > 0")
        _check(self.clip_seconds > 0, "data.clip_seconds", self.clip_seconds, "must be > 0")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")
        _check(self.demo_clips > 0, "data.demo_clips", self.demo_clips, "must be > 0")


@dataclass
class FrontendSettings:
    preset: str = "kaldi"
    """Feature preset: ``kaldi`` (AST / Audio-MAE / ASiT fbank) or ``atst``."""
    n_mels: int = 128
    """Mel bins; the encoder's input height."""
    backend: str = "auto"
    """``auto`` (Triton on CUDA, else torch), ``triton``, ``cpp`` or ``torch``."""

    def __post_init__(self):
        _check(self.n_mels > 0, "frontend.n_mels", self.n_mels, "must be > 0")
        _check(
            self.backend in ("auto", "triton", "cpp", "torch"),
            "frontend.backend",
            self.backend,
            "must be auto, triton, cpp or torch",
        )


@dataclass
class ModelConfig:
    name: str = "vit_base_patch16"
    """Encoder from the registry (``fastspec.models.list_models()``)."""
    decoder_dim: int = 512
    """Width of the MaskSpec / MAE decoder."""
    decoder_depth: int = 8
    """Blocks of the decoder."""
    decoder_heads: int = 16
    """Attention heads of the decoder."""

    def __post_init__(self):
        for key in ("decoder_dim", "decoder_depth", "decoder_heads"):
            _check(getattr(self, key) > 0, f"model.{key}", getattr(self, key), "must be > 0")
        _check(
            self.decoder_dim % self.decoder_heads == 0,
            "model.decoder_dim",
            self.decoder_dim,
            f"must be divisible by model.decoder_heads={self.decoder_heads}",
        )


@dataclass
class MaskingConfig:
    kind: str = "random"
    """Mask sampler (``fastspec.masking.list_mask_kinds()``)."""
    ratio: float = 0.75
    """Fraction of patches hidden from the encoder."""
    norm_pix_loss: bool = True
    """Normalise each target patch to zero mean, unit variance (MAE's norm_pix_loss)."""

    def __post_init__(self):
        _check(0.0 <= self.ratio < 1.0, "masking.ratio", self.ratio, "must be in [0, 1)")


@dataclass
class OptimConfig:
    blr: float = 1.5e-4
    """Base learning rate per 256 clips: lr = blr * effective_batch / 256 (MAE's rule)."""
    lr: float | None = None
    """Absolute learning rate; when set it replaces the one derived from ``blr``."""
    min_lr: float = 0.0
    """Floor of the cosine decay."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay (not applied to norms, biases and tokens)."""
    weight_decay_end: float | None = None
    """When set, weight decay follows a cosine from ``weight_decay`` to this value (DINO)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (MAE's)."""
    warmup_steps: int = 2000
    """Linear warm-up length in optimizer steps (capped at the run length)."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value (0 = no clipping)."""
    accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""

    def __post_init__(self):
        _check(self.blr > 0, "optim.blr", self.blr, "must be > 0")
        _check(self.lr is None or self.lr > 0, "optim.lr", self.lr, "must be > 0")
        _check(self.min_lr >= 0, "optim.min_lr", self.min_lr, "must be >= 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        _check(
            self.weight_decay_end is None or self.weight_decay_end >= 0,
            "optim.weight_decay_end",
            self.weight_decay_end,
            "must be >= 0",
        )
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optim.betas",
            self.betas,
            "must be two numbers in [0, 1)",
        )
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")
        _check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "must be >= 0")
        _check(self.accum_steps >= 1, "optim.accum_steps", self.accum_steps, "must be >= 1")


@dataclass
class TrainConfig:
    steps: int = 100_000
    """Optimizer steps of the whole run; the learning-rate schedule spans them."""
    epochs: float | None = None
    """When set, the run length in passes over the data; replaces ``steps``."""
    stop_after: int | None = None
    """Stop (with a checkpoint) once this many steps are done, before ``steps``; resume later."""
    batch_size: int = 64
    """Clips per micro-batch."""
    amp: str = "bf16"
    """Autocast precision: bf16, fp16 (with loss scaling) or none (float32)."""
    compile: bool = False
    """torch.compile each transformer block and the loss (slow first step on CPU)."""
    seed: int = 0
    """Seeds weights, data order, crops and masks: same seed, same run."""
    device: str = "auto"
    """``auto`` (cuda when present), ``cpu``, ``cuda`` or ``cuda:N``."""
    log_every: int = 10
    """Steps between metric lines (each one reads the loss back from the device)."""
    ckpt_every: int = 1000
    """Steps between checkpoints (a final one is always written)."""
    keep_ckpts: int = 2
    """Checkpoints kept on disk (older ones are deleted after a new one is complete)."""
    nonfinite: str = "stop"
    """On a NaN/inf loss: ``stop`` the run, or ``skip`` the step (reads the loss every step)."""
    progress: bool = True
    """Show a progress bar with loss and clips/s."""

    def __post_init__(self):
        _check(self.steps >= 0, "train.steps", self.steps, "must be >= 0")
        _check(self.epochs is None or self.epochs > 0, "train.epochs", self.epochs, "must be > 0")
        _check(
            self.stop_after is None or self.stop_after >= 0,
            "train.stop_after",
            self.stop_after,
            "must be >= 0",
        )
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be >= 1")
        _check(self.amp in AMP_MODES, "train.amp", self.amp, f"must be one of {AMP_MODES}")
        _check(self.log_every >= 1, "train.log_every", self.log_every, "must be >= 1")
        _check(self.ckpt_every >= 1, "train.ckpt_every", self.ckpt_every, "must be >= 1")
        _check(self.keep_ckpts >= 1, "train.keep_ckpts", self.keep_ckpts, "must be >= 1")
        _check(
            self.nonfinite in ("stop", "skip"),
            "train.nonfinite",
            self.nonfinite,
            "must be stop or skip",
        )
        _check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "train.device",
            self.device,
            "must be auto, cpu, cuda or cuda:N",
        )


@dataclass
class Config:
    recipe: str = "maskspec"
    """Pretraining recipe (currently ``maskspec``)."""
    out: str | None = None
    """Run directory; None picks ``runs/<recipe>-<timestamp>``."""
    data: DataConfig = field(default_factory=DataConfig)
    frontend: FrontendSettings = field(default_factory=FrontendSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        from fastspec.recipes import list_recipes

        recipes = list_recipes()
        _check(self.recipe in recipes, "recipe", self.recipe, f"must be one of {recipes}")

    @property
    def effective_batch(self) -> int:
        """Clips per optimizer step."""
        return self.train.batch_size * self.optim.accum_steps

    @property
    def abs_lr(self) -> float:
        """Peak learning rate actually used."""
        if self.optim.lr is not None:
            return self.optim.lr
        return self.optim.blr * self.effective_batch / 256

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Rebuild from :meth:`to_dict` output (e.g. a run's config.json); unknown keys fail."""
        return _from_dict(cls, d, prefix="")


def default_config(recipe: str = "maskspec", *, demo: bool = True) -> Config:
    """The starting point of a run: the paper's settings, or the CPU demo's when ``demo``.

    The demo shrinks everything that costs time (a 4-block 128-wide ViT, a 2-block decoder, 2 s
    clips, a short warm-up and a higher learning rate) so that ``fastspec pretrain`` finishes in
    about a minute on a 2-core CPU with a visibly falling loss.
    """
    cfg = Config(recipe=recipe)
    if demo:
        cfg.data = DataConfig(clip_seconds=2.0, num_workers=0)
        cfg.model = ModelConfig(
            name="vit_mini_patch16", decoder_dim=128, decoder_depth=2, decoder_heads=4
        )
        cfg.optim = OptimConfig(blr=4e-3, warmup_steps=20, min_lr=1e-5)
        cfg.train = TrainConfig(steps=250, batch_size=32, log_every=10, ckpt_every=50)
    return cfg


def apply_override(cfg: Config, assignment: str) -> None:
    """Apply one ``key.sub=value`` override in place, parsing value by the field's type.

    Raises ConfigError for a malformed assignment, an unknown key (listing the valid ones) or a
    value that does not parse as the field's type. Checks run again on the changed section.
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form key=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(node)}
        if part not in names:
            where = ".".join(parts[:i]) or "config"
            raise ConfigError(f"unknown config key {key!r}: {where} has {', '.join(sorted(names))}")
        if i == len(parts) - 1:
            hint = typing.get_type_hints(type(node))[part]
            if dataclasses.is_dataclass(hint):
                raise ConfigError(f"config key {key!r} is a section; set one of its fields")
            value = _parse(raw.strip(), hint, key)
            setattr(node, part, value)
            _recheck(cfg, parts[:-1])
        else:
            node = getattr(node, part)


def _recheck(cfg: Config, section: list[str]) -> None:
    # re-run __post_init__ checks of the section that changed, then of the whole tree
    node: Any = cfg
    for part in section:
        node = getattr(node, part)
    node.__post_init__()
    cfg.__post_init__()


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"bad config value {key}={value!r}: {why}")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(raw: str, hint: Any, key: str) -> Any:
    """Parse ``raw`` as a value of type ``hint`` (bool, int, float, str, X | None, tuple)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if type(None) in args and raw.lower() in ("none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse(raw, inner[0], key)
    if origin is tuple:
        items = [s for s in raw.strip("()[] ").split(",") if s.strip()]
        elem_types = typing.get_args(hint)
        if len(items) != len(elem_types):
            raise ConfigError(f"{key} takes {len(elem_types)} comma-separated values, got {raw!r}")
        return tuple(_parse(s.strip(), t, key) for s, t in zip(items, elem_types))
    try:
        if hint is bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return raw
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a valid {hint.__name__}") from None
    raise ConfigError(f"{key} has a type ({hint}) that overrides cannot set")


def _from_dict(cls: type, d: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(prefix + k for k in unknown)}")
    kwargs = {}
    for name, value in d.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, prefix=f"{prefix}{name}.")
        elif typing.get_origin(hint) is tuple:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
