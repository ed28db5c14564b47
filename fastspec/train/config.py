"""The typed configuration tree of a pretraining run.

A run is described by one :class:`Config`: a dataclass tree with a docstring per field and checks
in ``__post_init__``. It is built in three layers, each overriding the last:

1. :func:`default_config` for the recipe: the paper's settings when training on real data
   (``--data``), or the small ``demo`` settings that finish in about a minute on a 2-core CPU when
   no data is given (the sections every run has are here; each recipe's own section, such as
   ``asit``, and its paper and demo defaults are declared beside its code, in
   ``fastspec.recipes.<recipe>``'s ``RECIPE_SPECS``);
2. the command-line flags (``--model``, ``--steps``, ...);
3. ``key.sub=value`` overrides, parsed by the field's type; unknown keys are an error.

The resolved config, with derived values (effective batch, absolute learning rate), is printed at
start and written to ``config.json`` in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from fastspec.config_base import ConfigError, check, check_all, from_dict, set_key
from fastspec.recipes import list_recipes, recipe_sections, recipe_spec
from fastspec.train.clipping import CLIP_MODES
from fastspec.train.distributed import world_size

AMP_MODES = ("bf16", "fp16", "none")
PARALLEL_MODES = ("auto", "none", "ddp", "fsdp")


@dataclass
class DataConfig:
    source: str | None = None
    """Audio to train on: a folder (WAV/FLAC/OGG, recursive), a .csv or .jsonl manifest with a
    ``path`` column, tar shards (``.tar``, a folder of them, or ``shard-{000000..000009}.tar``),
    a dataset as ``esc50:ROOT``, ``speechcommands:ROOT`` or ``audioset:SEGMENTS.csv``, or None
    for the built-in synthetic demo corpus (``fastspec.data.open_source``)."""
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
    loader: str = "auto"
    """Data loader: ``dali`` (NVIDIA DALI decodes and hands batches to the GPU), ``torch``
    (soundfile in DataLoader workers) or ``auto`` (DALI when installed and there are files to
    decode, said in one line). Both give the same batches; ``num_workers`` sets DALI's threads.
    The environment variable ``FASTSPEC_LOADER`` overrides it."""

    def __post_init__(self):
        check(self.sample_rate > 0, "data.sample_rate", self.sample_rate, "must be > 0")
        check(self.clip_seconds > 0, "data.clip_seconds", self.clip_seconds, "must be > 0")
        check(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")
        check(self.demo_clips > 0, "data.demo_clips", self.demo_clips, "must be > 0")
        check(
            self.loader in ("auto", "dali", "torch"),
            "data.loader",
            self.loader,
            "must be auto, dali or torch",
        )
        if self.loader == "dali":
            from fastspec.data import dali_available

            check(
                dali_available(),
                "data.loader",
                self.loader,
                "NVIDIA DALI is not installed (pip install nvidia-dali-cuda130); use auto or torch",
            )


@dataclass
class FrontendSettings:
    preset: str = "kaldi"
    """Feature preset (``fastspec.frontend.list_presets()``): ``kaldi`` (AST / Audio-MAE fbank),
    ``kaldi32k`` (the same at 32 kHz, ASiT; needs data.sample_rate=32000), ``maskspec`` (32 kHz,
    per-bin statistics from ``frontend.stats``) or ``atst``."""
    n_mels: int = 128
    """Mel bins; the encoder's input height."""
    stats: str | None = None
    """Per-bin statistics file (``fastspec stats DATA --preset P``) for a per-bin normalised
    preset (``maskspec``); None: mean 0, std 1 per bin, announced once."""
    backend: str = "auto"
    """``auto`` (Triton on CUDA, else torch), ``triton``, ``cpp`` or ``torch``."""
    mel_range_jitter: tuple[int, int] = (0, 0)
    """Training augmentation of a Kaldi-mel preset, MaskSpec's ``(fmin_aug_range,
    fmax_aug_range)`` in Hz: each clip's mel banks span ``f_min + U{0..low-1}`` to ``f_max +
    high // 2 - U{0..high-1}`` (:mod:`fastspec.frontend.mel_range`; the torch backend, one bank
    per clip); (0, 0): off. The exported front end keeps the preset's range."""

    def __post_init__(self):
        check(self.n_mels > 0, "frontend.n_mels", self.n_mels, "must be > 0")
        check(
            len(self.mel_range_jitter) == 2
            and all(int(v) == v >= 0 for v in self.mel_range_jitter),
            "frontend.mel_range_jitter",
            self.mel_range_jitter,
            "must be two whole numbers of Hz >= 0",
        )
        self.mel_range_jitter = tuple(int(v) for v in self.mel_range_jitter)  # JSON gives a list
        check(
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
    patch_size: tuple[int, int] | None = None
    """(frames, mel bins) per patch of a ViT, overriding its own (None). Recipes that need a
    token layout ask for it through the encoder contract instead (the ATST recipes: full-frequency
    tokens of ``atst.token_frames`` frames, for ViT and MAST alike)."""
    pos_embed: str = "sincos"
    """Positions of every encoder: ``sincos`` (fixed 2-D sin-cos, MAE / MaskSpec) or ``learned``
    (a table up to ``model.max_frames`` frames, as ASiT's and ATST's reference ViTs)."""
    max_frames: int = 1024
    """Longest input, in frames, a ``learned`` position table covers."""
    qkv_bias: bool = True
    """Bias on the attention's query/key/value projection (ATST's reference ViT has none)."""
    drop_path: float = 0.0
    """Stochastic depth: the drop-path rate of the last block, rising linearly from 0."""

    def __post_init__(self):
        check(
            self.pos_embed in ("sincos", "learned"),
            "model.pos_embed",
            self.pos_embed,
            "must be sincos or learned",
        )
        check(self.max_frames >= 1, "model.max_frames", self.max_frames, "must be >= 1")
        check(0 <= self.drop_path < 1, "model.drop_path", self.drop_path, "must be in [0, 1)")
        if self.patch_size is not None:  # a JSON round trip gives a list
            self.patch_size = tuple(self.patch_size)
            check(
                len(self.patch_size) == 2 and all(int(v) == v > 0 for v in self.patch_size),
                "model.patch_size",
                self.patch_size,
                "must be two positive ints (frames, mel bins)",
            )
        for key in ("decoder_dim", "decoder_depth", "decoder_heads"):
            check(getattr(self, key) > 0, f"model.{key}", getattr(self, key), "must be > 0")
        check(
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
        check(0.0 <= self.ratio < 1.0, "masking.ratio", self.ratio, "must be in [0, 1)")


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
    warmup_epochs: float | None = None
    """When set, the warm-up length in passes over the data; replaces ``warmup_steps``."""
    grad_clip: float = 0.0
    """Clip the gradients to this norm (0 = no clipping), as ``clip_mode`` says."""
    clip_mode: str = "norm"
    """``norm``: the global norm of all gradients together (MAE); ``per_param``: each
    parameter's gradient on its own (DINO's and ASiT's ``clip_gradients``)."""
    accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""

    def __post_init__(self):
        check(self.blr > 0, "optim.blr", self.blr, "must be > 0")
        check(self.lr is None or self.lr > 0, "optim.lr", self.lr, "must be > 0")
        check_all(self, "optim", ("min_lr", "weight_decay", "weight_decay_end", "warmup_steps",
                                  "warmup_epochs", "grad_clip"),
                  lambda v: v is None or v >= 0, "must be >= 0")  # fmt: skip
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optim.betas",
            self.betas,
            "must be two numbers in [0, 1)",
        )
        check(self.accum_steps >= 1, "optim.accum_steps", self.accum_steps, "must be >= 1")
        check(self.clip_mode in CLIP_MODES, "optim.clip_mode", self.clip_mode,
              f"must be one of {CLIP_MODES}")  # fmt: skip


@dataclass
class TrainConfig:
    steps: int = 100_000
    """Optimizer steps of the whole run; the learning-rate schedule spans them."""
    epochs: float | None = None
    """When set, the run length in passes over the data; replaces ``steps``."""
    stop_after: int | None = None
    """Stop (with a checkpoint) once this many steps are done, before ``steps``; resume later.
    It belongs to one invocation: never saved in ``config.json``, never restored from it."""
    batch_size: int = 64
    """Clips per micro-batch of one rank; the effective batch is batch x accumulation x world."""
    global_batch: int | None = None
    """When set, the clips per optimizer step over all ranks (the papers' batch): accumulation
    becomes ``global_batch / (batch_size x world size)``, so any number of ranks trains the
    same run; it must divide evenly."""
    amp: str = "bf16"
    """Autocast precision: bf16, fp16 (with loss scaling) or none (float32)."""
    compile: bool = False
    """torch.compile every transformer block and the loss stage (fastspec.train.compile; slow
    first step on CPU)."""
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
    """Show a progress bar with loss and clips/s (rank 0 only)."""
    parallel: str = "auto"
    """Under torchrun: ``ddp`` (replicated weights, gradients all-reduced on the last
    micro-step), ``fsdp`` (FSDP2: each block and the root sharded over the ranks, bf16 compute
    on CUDA with fp32 reduction), ``none`` (one process only) or ``auto`` (ddp when the world
    has more than one rank)."""
    dist_timeout: float = 600.0
    """Seconds a collective may wait for a dead or hung rank before the others exit."""

    def __post_init__(self):
        check(self.steps >= 0, "train.steps", self.steps, "must be >= 0")
        check_all(self, "train", ("epochs", "global_batch", "batch_size"),
                  lambda v: v is None or v > 0, "must be > 0")  # fmt: skip
        check(self.stop_after is None or self.stop_after >= 0, "train.stop_after",
              self.stop_after, "must be >= 0")  # fmt: skip
        check(self.amp in AMP_MODES, "train.amp", self.amp, f"must be one of {AMP_MODES}")
        check(self.log_every >= 1, "train.log_every", self.log_every, "must be >= 1")
        check(self.ckpt_every >= 1, "train.ckpt_every", self.ckpt_every, "must be >= 1")
        check(self.keep_ckpts >= 1, "train.keep_ckpts", self.keep_ckpts, "must be >= 1")
        check(
            self.nonfinite in ("stop", "skip"),
            "train.nonfinite",
            self.nonfinite,
            "must be stop or skip",
        )
        check(
            self.parallel in PARALLEL_MODES,
            "train.parallel",
            self.parallel,
            f"must be one of {PARALLEL_MODES}",
        )
        check(self.dist_timeout > 0, "train.dist_timeout", self.dist_timeout, "must be > 0")
        check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "train.device",
            self.device,
            "must be auto, cpu, cuda or cuda:N",
        )


@dataclass
class RunConfig:
    """The sections every run has; :class:`Config` adds one section per recipe settings
    dataclass (``asit``, ``atst``: declared in ``fastspec.recipes.<recipe>``)."""

    recipe: str = "maskspec"
    """Pretraining recipe (``fastspec.recipes.list_recipes()``)."""
    out: str | None = None
    """Run directory; None picks ``runs/<recipe>-<timestamp>``."""
    data: DataConfig = field(default_factory=DataConfig)
    frontend: FrontendSettings = field(default_factory=FrontendSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        recipes = list_recipes()
        check(self.recipe in recipes, "recipe", self.recipe, f"must be one of {recipes}")

    @property
    def effective_batch(self) -> int:
        """Clips per optimizer step over all ranks: batch x accumulation x world size."""
        return self.train.batch_size * self.optim.accum_steps * world_size()

    @property
    def abs_lr(self) -> float:
        """Peak learning rate actually used (it follows the effective batch)."""
        if self.optim.lr is not None:
            return self.optim.lr
        return self.optim.blr * self.effective_batch / 256

    def to_dict(self) -> dict[str, Any]:
        """The run's settings; per-invocation ones (``train.stop_after``) are left out."""
        d = dataclasses.asdict(self)
        d["train"]["stop_after"] = None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Rebuild from :meth:`to_dict` output (e.g. a run's config.json); unknown keys fail.
        A ``train.stop_after`` saved by an older version is not restored: it belonged to the
        invocation that wrote it."""
        cfg = from_dict(cls, d)
        cfg.train.stop_after = None
        return cfg


# one section per recipe settings dataclass, named by the recipe (``asit.fill=noise``)
Config = dataclasses.make_dataclass(
    "Config",
    [(name, cls, field(default_factory=cls)) for name, cls in recipe_sections().items()],
    bases=(RunConfig,),
)
Config.__doc__ = "A run's config: :class:`RunConfig`'s sections plus one per recipe section."
Config.__module__ = __name__


def default_config(recipe: str = "maskspec", *, demo: bool = True) -> Config:
    """The starting point of a run: the paper's settings, or the CPU demo's when ``demo``.

    The demo shrinks everything that costs time (a 4-block 128-wide ViT, 2 s clips, a short
    warm-up and a higher learning rate) so that ``fastspec pretrain`` finishes in about a minute
    on a 2-core CPU with a visibly falling loss. Each recipe then applies its own paper or demo
    settings (``RecipeSpec.paper`` / ``.demo`` in ``fastspec.recipes.<recipe>``).
    """
    spec = recipe_spec(recipe)
    cfg = Config(recipe=recipe)
    if demo:
        cfg.data = DataConfig(clip_seconds=2.0, num_workers=0)
        cfg.model = ModelConfig(name="vit_mini_patch16")
        cfg.optim = OptimConfig(blr=4e-3, warmup_steps=20, min_lr=1e-5)
        # 120 steps: about a minute on a 2-core AVX2 CPU in float32 (measured, README), where
        # 250 took 110 s; maskspec's loss falls from 0.87 (step 10) to about 0.49 on the way
        cfg.train = TrainConfig(steps=120, batch_size=32, log_every=10, ckpt_every=50)
    for key, value in (spec.demo if demo else spec.paper).items():
        set_key(cfg, key, value=value)
    return cfg


def resolve_counts(cfg: Config, n_clips: int) -> None:
    """Turn the settings given over all ranks or in passes over the data into this world's
    optimizer-step counts, in place: ``train.global_batch`` -> ``optim.accum_steps``,
    ``train.epochs`` -> ``train.steps``, ``optim.warmup_epochs`` -> ``optim.warmup_steps``.

    ``n_clips`` is the size of one pass over the data. Raises ConfigError when the global batch
    is not a whole number of micro-batches of every rank.
    """
    if cfg.train.global_batch is not None:
        per_step = cfg.train.batch_size * world_size()
        if cfg.train.global_batch % per_step:
            raise ConfigError(
                f"train.global_batch={cfg.train.global_batch} is not a multiple of "
                f"train.batch_size x world size = {cfg.train.batch_size} x {world_size()}; "
                "change train.batch_size or the number of ranks"
            )
        cfg.optim.accum_steps = cfg.train.global_batch // per_step
    steps_per_epoch = n_clips / cfg.effective_batch
    if cfg.train.epochs is not None:  # passes over the data by the global batch
        cfg.train.steps = max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    if cfg.optim.warmup_epochs is not None:
        cfg.optim.warmup_steps = math.ceil(cfg.optim.warmup_epochs * steps_per_epoch)


def apply_override(cfg: Config, assignment: str) -> None:
    """Apply one ``key.sub=value`` override in place, parsing value by the field's type.

    Raises ConfigError for a malformed assignment, an unknown key (listing the valid ones) or a
    value that does not parse as the field's type. Checks run again on the changed section.
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form key=value")
    key, raw = assignment.split("=", 1)
    set_key(cfg, key, raw=raw)


__all__ = [
    "Config",
    "ConfigError",
    "RunConfig",
    "apply_override",
    "default_config",
    "resolve_counts",
]
