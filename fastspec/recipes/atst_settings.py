"""Settings of the ATST recipes: config section ``atst`` (shared by ``atst-clip`` and
``atst-frame``), the constructor options both take from a run config, and the papers' and the
CPU demo's common defaults (``fastspec.recipes.spec``); each recipe's own presets extend these at
the top of its file, and the BYOL pair itself is :mod:`fastspec.recipes.byol`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastspec.config_base import check, check_all
from fastspec.frontend import get_preset, num_frames

# ==== settings: config section `atst`, shared by atst-clip and atst-frame ======================


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
    span_overlap: bool = True
    """atst-frame with ``masking.kind=time_span``: fairseq's overlapping spans as the paper's
    reference (about 50 % of the frames masked at ratio 0.65); False: exactly ``ratio``, in
    spans that never overlap."""
    symmetric: bool = True
    """atst-frame: both copies go through student and teacher and the two directions of the
    loss are averaged (paper); False: student on the augmented copy, teacher on the clean one."""
    token_frames: int = 4
    """Frames per output token, each token spanning every mel bin (4 = ATST's 40 ms at a 10 ms
    hop). The recipe asks its encoder for this layout through the encoder contract
    (``frame_tokens``): a ViT gets 4 x 64 patches, MAST pools frequency to one token and time
    only as far as this allows."""
    clip_pooling: str = "cls"
    """atst-clip: the clip embedding BYOL compares, ``cls`` (the class token, ATST) or ``mean``
    (the mean of the valid output tokens)."""

    def __post_init__(self):
        check(
            self.crop_seconds is None or self.crop_seconds > 0,
            "atst.crop_seconds",
            self.crop_seconds,
            "must be > 0 (or None for the recipe's)",
        )
        check(0 <= self.ema_momentum < 1, "atst.ema_momentum", self.ema_momentum,
              "must be in [0, 1)")  # fmt: skip
        counts = ("proj_hidden", "proj_dim", "memory_size", "span_length", "min_spans",
                  "token_frames")  # fmt: skip
        check_all(self, "atst", counts, lambda v: v >= 1, "must be >= 1")
        check(0 <= self.mixup_ratio <= 1, "atst.mixup_ratio", self.mixup_ratio,
              "must be in [0, 1]")  # fmt: skip
        check_all(self, "atst", ("freq_scale", "time_scale"),
                  lambda v: 0 < v[0] <= v[1] and v[1] >= 1,
                  "must be (low, high) with 0 < low <= high and high >= 1")  # fmt: skip
        check(self.time_canvas >= 1, "atst.time_canvas", self.time_canvas, "must be >= 1")
        check(self.clip_pooling in ("cls", "mean"), "atst.clip_pooling", self.clip_pooling,
              "must be cls or mean")  # fmt: skip


def atst_common_options(cfg, default_crop_seconds: float) -> dict:
    """Constructor arguments both ATST recipes take from the ``atst`` section, the crop
    converted from seconds to frames of the run's front end."""
    a = cfg.atst
    seconds = a.crop_seconds if a.crop_seconds is not None else default_crop_seconds
    features = get_preset(
        cfg.frontend.preset, sample_rate=cfg.data.sample_rate, n_mels=cfg.frontend.n_mels
    )
    return {
        "crop_frames": int(num_frames(round(seconds * cfg.data.sample_rate), features)),
        "proj_hidden": a.proj_hidden,
        "proj_dim": a.proj_dim,
        "ema_base": a.ema_momentum,
        "mixup_ratio": a.mixup_ratio,
        "memory_size": a.memory_size,
        "freq_scale": a.freq_scale,
        "token_frames": a.token_frames,
    }


# ATST's input and training, shared by both recipes (Audio-WestlakeU/audiossl): 64 mel, 16 kHz,
# 40 ms full-frequency tokens asked of the encoder (``atst.token_frames``); the reference ViT
# (models/atst/audio_transformer.py and methods/atstframe/audio_transformer.py: AST_base /
# FrameAST_base) has qkv_bias=False, drop_path_rate=0.1 (linear over the blocks) and a learned
# position table (pos_type "cut", trunc-normal 0.02) of 1 + 1001 // 4 entries, 1-D over time as
# the tokens span every mel bin; model.py of both: transformers' AdamW, the lr per step on a
# cosine to 1e-6 after a linear warm-up from 0, weight decay on a cosine 0.04 -> 0.4 (not on
# biases and norms), no gradient clipping, the EMA on a cosine from its base to 1; train.py of
# both: lr = learning_rate x nproc x batch_size_per_gpu / 256 (our blr). Counted in steps, as
# the reference counts them (max_steps, warmup_steps). The table here has 1004 // 4 = 251 rows
# (its 250 patch rows and one more), so a whole 10 s clip (1001 frames, padded) fits.
ATST_PAPER = {
    "frontend.preset": "atst",
    "frontend.n_mels": 64,
    "data.clip_seconds": 10.0,
    "model.name": "vit_base_patch16",
    "model.pos_embed": "learned",
    "model.max_frames": 1004,
    "model.qkv_bias": False,
    "model.drop_path": 0.1,
    "optim.min_lr": 1e-6,
    "optim.weight_decay": 0.04,
    "optim.weight_decay_end": 0.4,
    "optim.betas": (0.9, 0.999),
    "optim.grad_clip": 0.0,
}
# about a minute on a 2-core CPU: a 4-block ViT on 2 s clips, narrow heads, and a teacher that
# follows the student within a short run: the paper's momenta average over ~2000 steps (0.1-0.6 %
# of its runs); at the code default 0.99 a 60-step run moves the exported teacher about a quarter
# of the way from its random init (its probe matched random init's to the clip), while 0.9
# averages over ~10 steps. The base lr is raised to match (blr 0.02: 1.25e-3 at 16 clips).
ATST_DEMO = {
    "frontend.preset": "atst",
    "frontend.n_mels": 64,
    "atst.proj_hidden": 256,
    "atst.proj_dim": 128,
    "atst.memory_size": 256,
    "atst.ema_momentum": 0.9,
    "optim.blr": 0.02,
    "optim.weight_decay": 0.04,
    "optim.weight_decay_end": 0.4,
    "optim.betas": (0.9, 0.999),
    "train.steps": 200,
}

# ==== end of settings ==========================================================================


__all__ = ["ATST_DEMO", "ATST_PAPER", "AtstConfig", "atst_common_options"]
