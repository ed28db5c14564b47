"""Settings of the ``asit`` recipe: its config section (``asit.*``), the constructor options
taken from a run config, and the paper's and the CPU demo's defaults (``fastspec.recipes.spec``);
the recipe itself is :mod:`fastspec.recipes.asit`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fastspec.config_base import check, check_all
from fastspec.frontend import get_preset, num_frames

FILLS = ("zeros", "noise")


# ==== settings: config section `asit`, paper and demo defaults (fastspec.recipes.spec) =========


@dataclass
class AsitConfig:
    """Settings of the ``asit`` recipe; defaults are those of the paper's code
    (Sara-Ahmed/ASiT ``main_ASiT.py``). The mask kind and the top of GMML's band are
    ``masking.kind`` (``group``) and ``masking.ratio`` (0.7)."""

    crop_seconds: float = 6.0
    """Length of each of the two waveform crops per clip; their features are cut down to whole
    patches (6 s: 598 -> 592 frames, the paper's ``num_frames``)."""
    roll_prob: float = 0.5
    """Probability that a clip's waveform is rolled by a random shift before it is cropped (the
    paper's ``dataloader.py``: 1/2)."""
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
        check(self.crop_seconds > 0, "asit.crop_seconds", self.crop_seconds, "must be > 0")
        check(
            0 <= self.mask_min_ratio < 1,
            "asit.mask_min_ratio",
            self.mask_min_ratio,
            "must be in [0, 1)",
        )
        check(0 < self.max_block <= 1, "asit.max_block", self.max_block, "must be in (0, 1]")
        check(self.fill in FILLS, "asit.fill", self.fill, "must be zeros or noise")
        check_all(self, "asit", ("paste_prob", "teacher_temp_warmup", "freeze_last_layer",
                                 "roll_prob"),
                  lambda v: 0 <= v <= 1, "must be in [0, 1]")  # fmt: skip
        check(0 < self.paste_ratio < 1, "asit.paste_ratio", self.paste_ratio, "must be in (0, 1)")
        check_all(self, "asit", ("out_dim_global", "out_dim_local", "head_hidden_dim",
                                 "head_bottleneck_dim", "rec_hidden_dim", "rec_bottleneck_dim"),
                  lambda v: v >= 1, "must be >= 1")  # fmt: skip
        check_all(self, "asit", ("student_temp", "teacher_temp", "warmup_teacher_temp"),
                  lambda v: v > 0, "must be > 0")  # fmt: skip
        check(
            0 <= self.center_momentum < 1,
            "asit.center_momentum",
            self.center_momentum,
            "must be in [0, 1)",
        )
        check(0 <= self.ema_momentum <= 1, "asit.ema_momentum", self.ema_momentum,
              "must be in [0, 1]")  # fmt: skip
        check_all(self, "asit", ("global_weight", "local_weight", "recon_weight"),
                  lambda v: v >= 0, "must be >= 0")  # fmt: skip


def asit_options(cfg) -> dict:
    """ASiT's constructor arguments from the run config: the ``asit`` section maps one to one
    onto them, but for the crop, given in seconds there and in samples (and the frames the run's
    front end makes of them) here; the mask kind and ratio come from ``masking``."""
    features = get_preset(
        cfg.frontend.preset, sample_rate=cfg.data.sample_rate, n_mels=cfg.frontend.n_mels
    )
    options = dataclasses.asdict(cfg.asit)
    crop_samples = round(options.pop("crop_seconds") * cfg.data.sample_rate)
    return {
        **options,
        "crop_samples": crop_samples,
        "crop_frames": int(num_frames(crop_samples, features)),
        "mask_kind": cfg.masking.kind,
        "mask_ratio": cfg.masking.ratio,
    }


# ASiT's training (Sara-Ahmed/ASiT main_ASiT.py defaults, README command): Kaldi 128-mel
# features at 32 kHz, two 6 s waveform crops, group masking 0.7; ViT-B with learned positions,
# qkv bias and drop path 0.1 in the student (vision_transformer.py vit_base; the teacher has
# none); 4 GPUs x 32 clips = 128 per step, lr 5e-4 per 256, 10 warm-up epochs of 100, cosine lr
# to 1e-6, weight decay cosine 0.04 -> 0.4, each parameter's gradient clipped at 3
# (utils.clip_gradients), AdamW (0.9, 0.999). The global batch holds at any world size: the
# accumulation is derived from it (train.global_batch).
_DINO_OPTIM = {
    "optim.weight_decay": 0.04,
    "optim.weight_decay_end": 0.4,
    "optim.betas": (0.9, 0.999),
    "optim.grad_clip": 3.0,
    "optim.clip_mode": "per_param",
}
ASIT_PAPER = {
    # data_transformations.py: SAMPLE_RATE = 32000, Kaldi fbank, 128 mel
    "data.sample_rate": 32000,
    "frontend.preset": "kaldi32k",
    "masking.kind": "group",
    "masking.ratio": 0.7,
    "data.clip_seconds": 10.0,  # AudioSet's clips, which the paper rolls and crops whole
    "model.name": "vit_base_patch16",
    "model.pos_embed": "learned",
    "model.max_frames": 592,  # the reference's table: audio_size = [num_frames, 128]
    "model.qkv_bias": True,
    "model.drop_path": 0.1,
    **_DINO_OPTIM,
    "optim.blr": 5e-4,
    "optim.min_lr": 1e-6,
    "optim.warmup_epochs": 10.0,
    "train.epochs": 100.0,
    "train.global_batch": 128,
    "train.batch_size": 32,
}
# about a minute on a 2-core CPU: the 4-block ViT on two 1 s crops of the 2 s demo clips,
# narrow heads, a teacher that follows faster over the short run, and a constant teacher
# temperature (the paper's warm-up to 0.07 raises the teacher's entropy, and with it the
# distillation losses, over the first 30 % of a run)
ASIT_DEMO = {
    "masking.kind": "group",
    "masking.ratio": 0.7,
    "asit.crop_seconds": 1.0,
    "asit.out_dim_global": 1024,
    "asit.out_dim_local": 256,
    "asit.head_hidden_dim": 256,
    "asit.head_bottleneck_dim": 64,
    "asit.rec_hidden_dim": 128,
    "asit.rec_bottleneck_dim": 64,
    "asit.ema_momentum": 0.98,
    "asit.teacher_temp": 0.04,
    "asit.teacher_temp_warmup": 0.0,
    **_DINO_OPTIM,
    # the demo's high lr is held by the global norm: clipped per parameter at 3, the teacher
    # flattens over 150 steps (its entropy 6.3 of ln 1024 = 6.9; the total loss stays at 11.3)
    "optim.clip_mode": "norm",
    "optim.blr": 8e-3,
    "train.steps": 150,
}

# ==== end of settings ==========================================================================


__all__ = ["ASIT_DEMO", "ASIT_PAPER", "FILLS", "AsitConfig", "asit_options"]
