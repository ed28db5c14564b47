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
        _check(self.sample_rate > 0, "data.sample_rate", self.sample_rate, "must be > 0")
        _check(self.clip_seconds > 0, "data.clip_seconds", self.clip_seconds, "must be > 0")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")
        _check(self.demo_clips > 0, "data.demo_clips", self.demo_clips, "must be > 0")
        _check(
            self.loader in ("auto", "dali", "torch"),
            "data.loader",
            self.loader,
            "must be auto, dali or torch",
        )
        if self.loader == "dali":
            from fastspec.data import dali_available

            _check(
                dali_available(),
                "data.loader",
                self.loader,
                "NVIDIA DALI is not installed (pip install nvidia-dali-cuda130); use auto or torch",
            )


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
    patch_size: tuple[int, int] | None = None
    """(frames, mel bins) per patch, overriding the encoder's own (None); the ATST recipes use
    (4, 64): full-frequency patches of 40 ms."""

    def __post_init__(self):
        if self.patch_size is not None:  # a JSON round trip gives a list
            self.patch_size = tuple(self.patch_size)
            _check(
                len(self.patch_size) == 2 and all(int(v) == v > 0 for v in self.patch_size),
                "model.patch_size",
                self.patch_size,
                "must be two positive ints (frames, mel bins)",
            )
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
class AtstConfig:
    """Settings of the ``atst-clip`` and ``atst-frame`` recipes (ATST-Frame's mask kind and
    ratio are ``masking.kind`` and ``masking.ratio``)."""

    crop_seconds: float | None = None
    """Length of each crop taken from a clip; None: the paper's, 6 s for atst-clip's two crops
    and 10 s for atst-frame's one. Cut down to whole patches (601 -> 600 frames)."""
    ema_momentum: float = 0.99
    """Teacher momentum at the first step; it rises on a cosine to 1 at the last (the paper's
    base models: 0.9995 atst-clip, 0.9996 atst-frame)."""
    proj_hidden: int = 4096
    """Hidden width of the projector and the predictor (Linear -> BatchNorm -> ReLU -> Linear)."""
    proj_dim: int = 256
    """Output width of the projector and the predictor: the space of the BYOL loss."""
    mixup_ratio: float = 0.4
    """Largest weight of the past crop in log-mixup-exp (0 disables mixing)."""
    memory_size: int = 2000
    """Past crops remembered for log-mixup-exp (held on the device and in checkpoints)."""
    freq_scale: tuple[float, float] = (0.6, 1.5)
    """Random resize crop: range of the crop height as a fraction of the mel bins."""
    time_scale: tuple[float, float] = (0.6, 1.5)
    """Random resize crop (atst-clip only): range of the crop width as a fraction of the
    frames. atst-frame never resizes time: its copies must stay aligned frame for frame."""
    time_canvas: float = 1.5
    """Random resize crop (atst-clip only): the zero canvas the crop is cut from, as a multiple
    of the crop's length."""
    span_length: int = 5
    """atst-frame with ``masking.kind=time_span``: tokens (40 ms each) per masked span."""
    min_spans: int = 2
    """atst-frame with ``masking.kind=time_span``: at least this many spans are masked."""
    symmetric: bool = True
    """atst-frame: both copies go through student and teacher and the two directions of the
    loss are averaged (paper); False: student on the augmented copy, teacher on the clean one."""

    def __post_init__(self):
        _check(
            self.crop_seconds is None or self.crop_seconds > 0,
            "atst.crop_seconds",
            self.crop_seconds,
            "must be > 0 (or None for the recipe's)",
        )
        _check(
            0 <= self.ema_momentum < 1, "atst.ema_momentum", self.ema_momentum, "must be in [0, 1)"
        )
        for key in ("proj_hidden", "proj_dim", "memory_size", "span_length", "min_spans"):
            _check(getattr(self, key) >= 1, f"atst.{key}", getattr(self, key), "must be >= 1")
        _check(
            0 <= self.mixup_ratio <= 1, "atst.mixup_ratio", self.mixup_ratio, "must be in [0, 1]"
        )
        for key in ("freq_scale", "time_scale"):
            lo, hi = getattr(self, key)
            _check(
                0 < lo <= hi and hi >= 1,
                f"atst.{key}",
                getattr(self, key),
                "must be (low, high) with 0 < low <= high and high >= 1",
            )
        _check(self.time_canvas >= 1, "atst.time_canvas", self.time_canvas, "must be >= 1")


@dataclass
class AsitConfig:
    """Settings of the ``asit`` recipe (``fastspec.recipes.asit``); defaults are those of the
    paper's code (Sara-Ahmed/ASiT ``main_ASiT.py``). The mask kind and the top of GMML's band
    are ``masking.kind`` (``group``) and ``masking.ratio`` (0.7)."""

    crop_seconds: float = 6.0
    """Length of each of the two crops per clip; cut down to whole patches (6 s: 598 -> 592
    frames, the paper's ``num_frames``)."""
    mask_min_ratio: float = 0.5
    """Bottom of GMML's band: each crop's target coverage is uniform in [this, masking.ratio]."""
    max_block: float = 0.3
    """Largest rectangle side, as a fraction of the crop's frames and of its mel bins."""
    fill: str = "zeros"
    """What covers the masked bins: ``zeros`` (the paper's ``drop_type``) or ``noise`` N(0, 1)."""
    paste_prob: float = 0.5
    """Probability that a crop is corrupted by pasting another clip's bins instead (the paper's
    ``collate_batch``: 1/2); 0 disables pasting."""
    paste_ratio: float = 0.3
    """Fraction of the crop the pasted rectangles cover (the paper's ``drop_replace``)."""
    out_dim_global: int = 8192
    """Prototypes of the class-token (global) distillation output."""
    out_dim_local: int = 1024
    """Prototypes of the patch-token (local) distillation output."""
    head_hidden_dim: int = 2048
    """Hidden width of the distillation head's MLP (shared by class and patch tokens)."""
    head_bottleneck_dim: int = 256
    """Bottleneck of the distillation head, L2-normalised before the prototypes."""
    rec_hidden_dim: int = 768
    """Hidden width of the reconstruction head's MLP."""
    rec_bottleneck_dim: int = 128
    """Bottleneck of the reconstruction head, before the per-patch map to the bins."""
    student_temp: float = 0.1
    """Softmax temperature of the student's outputs."""
    teacher_temp: float = 0.07
    """Teacher softmax temperature after the warm-up."""
    warmup_teacher_temp: float = 0.04
    """Teacher softmax temperature at the first step."""
    teacher_temp_warmup: float = 0.3
    """Fraction of the run over which the teacher temperature rises linearly (30 of 100 epochs)."""
    center_momentum: float = 0.9
    """EMA momentum of the centers subtracted from the teacher's outputs."""
    ema_momentum: float = 0.996
    """Teacher momentum at the first step; it rises on a cosine to 1 at the last."""
    freeze_last_layer: float = 0.0
    """Fraction of the run during which the prototypes are not updated (DINO's option; the
    paper's code names no parameter it matches, so it never freezes)."""
    global_weight: float = 1.0
    """Weight of the global (class-token, cross-crop) distillation loss."""
    local_weight: float = 1.0
    """Weight of the local (per-patch) distillation loss."""
    recon_weight: float = 2.0
    """Weight of the L1 reconstruction loss of the masked bins."""

    def __post_init__(self):
        _check(self.crop_seconds > 0, "asit.crop_seconds", self.crop_seconds, "must be > 0")
        _check(
            0 <= self.mask_min_ratio < 1,
            "asit.mask_min_ratio",
            self.mask_min_ratio,
            "must be in [0, 1)",
        )
        _check(0 < self.max_block <= 1, "asit.max_block", self.max_block, "must be in (0, 1]")
        _check(self.fill in ("zeros", "noise"), "asit.fill", self.fill, "must be zeros or noise")
        for key in ("paste_prob", "teacher_temp_warmup", "freeze_last_layer"):
            value = getattr(self, key)
            _check(0 <= value <= 1, f"asit.{key}", value, "must be in [0, 1]")
        _check(0 < self.paste_ratio < 1, "asit.paste_ratio", self.paste_ratio, "must be in (0, 1)")
        for key in ("out_dim_global", "out_dim_local", "head_hidden_dim", "head_bottleneck_dim",
                    "rec_hidden_dim", "rec_bottleneck_dim"):  # fmt: skip
            _check(getattr(self, key) >= 1, f"asit.{key}", getattr(self, key), "must be >= 1")
        for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            _check(getattr(self, key) > 0, f"asit.{key}", getattr(self, key), "must be > 0")
        _check(
            0 <= self.center_momentum < 1,
            "asit.center_momentum",
            self.center_momentum,
            "must be in [0, 1)",
        )
        _check(
            0 <= self.ema_momentum <= 1, "asit.ema_momentum", self.ema_momentum, "must be in [0, 1]"
        )
        for key in ("global_weight", "local_weight", "recon_weight"):
            _check(getattr(self, key) >= 0, f"asit.{key}", getattr(self, key), "must be >= 0")


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
    atst: AtstConfig = field(default_factory=AtstConfig)
    asit: AsitConfig = field(default_factory=AsitConfig)
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
    if recipe in ("atst-clip", "atst-frame"):
        _atst_defaults(cfg, recipe, demo)
    if recipe == "asit":
        _asit_defaults(cfg, demo)
    return cfg


def _asit_defaults(cfg: Config, demo: bool) -> None:
    """ASiT's settings (Sara-Ahmed/ASiT ``main_ASiT.py`` and README): Kaldi 128-mel features,
    two 6 s crops, group masking 0.7, ViT-B; 4 GPUs x 32 clips, lr 5e-4 per 256, 10 warm-up
    epochs of 100 on AudioSet-2M (about 2M clips: 15,625 steps per epoch at 128 clips), cosine
    lr to 1e-6, weight decay cosine 0.04 -> 0.4, gradient clipping 3, AdamW (0.9, 0.999). Here
    the 4-GPU batch is one GPU's batch times 4 accumulation steps.
    """
    cfg.masking = MaskingConfig(kind="group", ratio=0.7)
    if demo:
        # about a minute on a 2-core CPU: the 4-block ViT on two 1 s crops of the 2 s demo
        # clips, narrow heads, a teacher that follows faster over the short run, and a constant
        # teacher temperature (the paper's warm-up to 0.07 raises the teacher's entropy, and with
        # it the distillation losses, over the first 30 % of a run)
        cfg.asit = AsitConfig(
            crop_seconds=1.0,
            out_dim_global=1024,
            out_dim_local=256,
            head_hidden_dim=256,
            head_bottleneck_dim=64,
            rec_hidden_dim=128,
            rec_bottleneck_dim=64,
            ema_momentum=0.98,
            teacher_temp=0.04,
            teacher_temp_warmup=0.0,
        )
        cfg.optim = OptimConfig(
            blr=8e-3,
            min_lr=1e-5,
            warmup_steps=20,
            weight_decay=0.04,
            weight_decay_end=0.4,
            betas=(0.9, 0.999),
            grad_clip=3.0,
        )
        cfg.train = TrainConfig(steps=150, batch_size=32, log_every=10, ckpt_every=50)
        return
    cfg.data = DataConfig(clip_seconds=10.0)
    cfg.model = ModelConfig(name="vit_base_patch16")
    cfg.optim = OptimConfig(
        blr=5e-4,
        min_lr=1e-6,
        warmup_steps=156_250,
        weight_decay=0.04,
        weight_decay_end=0.4,
        betas=(0.9, 0.999),
        grad_clip=3.0,
        accum_steps=4,
    )
    cfg.train = TrainConfig(steps=1_562_500, batch_size=32)


def _atst_defaults(cfg: Config, recipe: str, demo: bool) -> None:
    """ATST's input (``atst`` features, 64 mel, 64 x 4 patches of 40 ms) and training settings.

    Paper (base models, audiossl's train_base.sh / README): ATST-Clip 6 GPUs x 256 clips, lr
    2e-4 per 256, 15,860 warm-up of 318,000 steps, momentum 0.9995; ATST-Frame 6 x 144 clips,
    lr 8e-5 per 256, 19,900 of 398,000 steps, momentum 0.9996, 65 % time-span masking. Both:
    AdamW (0.9, 0.999), weight decay cosine 0.04 -> 0.4, cosine lr to 1e-6, 10 s AudioSet clips.
    Here the 6-GPU batch is one GPU's batch times 6 accumulation steps.
    """
    cfg.frontend = FrontendSettings(preset="atst", n_mels=64)
    frame = recipe == "atst-frame"
    if frame:
        cfg.masking = MaskingConfig(kind="time_span", ratio=0.65)
    if demo:
        # about a minute on a 2-core CPU: a 4-block ViT on 2 s clips, narrow heads
        cfg.model = ModelConfig(name="vit_mini_patch16", patch_size=(4, 64))
        cfg.atst = AtstConfig(
            crop_seconds=2.0 if frame else 1.5, proj_hidden=256, proj_dim=128, memory_size=256
        )
        cfg.optim = OptimConfig(
            blr=4e-3,
            min_lr=1e-5,
            warmup_steps=20,
            weight_decay=0.04,
            weight_decay_end=0.4,
            betas=(0.9, 0.999),
        )
        cfg.train = TrainConfig(steps=200, batch_size=32, log_every=10, ckpt_every=50)
        return
    cfg.data = DataConfig(clip_seconds=10.0)
    cfg.model = ModelConfig(name="vit_base_patch16", patch_size=(4, 64))
    cfg.atst = AtstConfig(ema_momentum=0.9996 if frame else 0.9995)
    cfg.optim = OptimConfig(
        blr=8e-5 if frame else 2e-4,
        min_lr=1e-6,
        warmup_steps=19_900 if frame else 15_860,
        weight_decay=0.04,
        weight_decay_end=0.4,
        betas=(0.9, 0.999),
        accum_steps=6,
    )
    cfg.train = TrainConfig(steps=398_000 if frame else 318_000, batch_size=144 if frame else 256)


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
