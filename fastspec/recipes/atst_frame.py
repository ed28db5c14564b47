"""ATST-Frame (Li et al. 2023): BYOL between masked student frames and unmasked teacher frames.

One random 10 s crop per clip (1000 frames = 250 full-frequency 64 x 4 tokens of 40 ms) gives
two copies: a clean one and one augmented with log-mixup-exp and a random resize crop along the
mel axis only (the time axis must stay aligned frame for frame). One ``time_span`` mask per clip
(spans of 5 tokens, 65 %, at least 2 spans) is shared by both copies. The student embeds each
copy with the masked tokens' patch embeddings replaced by a learned mask embedding (before the
positions are added), the teacher sees each copy unmasked; both outputs at the masked frames go
through the heads, and the loss is BYOL's ``2 - 2 cos`` on masked frames of real audio only.

Symmetric (the paper's setting, ``symmetric=True``): both copies go through student and teacher,
and the student's prediction for each copy matches the teacher's frames of the other copy, the
two directions averaged (ATST-Frame's ``ByolLoss(symmetric=True)``). With ``symmetric=False`` the
student sees only the augmented copy and the teacher only the clean one.

No host sync: every mask kind except ``group`` lists the same number M of masked candidates in
every row (the complement of ``ids_keep``), so they are gathered into a fixed-shape [R, M, D]
tensor; candidates that fall in a crop's padding, or that overlapping time spans left unmasked,
are kept out of the batch-norm statistics and the loss by weights, not by boolean indexing.

Any encoder of the contract: the recipe asks for full-frequency output tokens of
``token_frames`` frames and no class token, as ATST-Frame's ``FrameAST`` has none
(:meth:`ATSTFrame.encoder_options`), so the time spans are masked on the
encoder's output time axis and every output token is one frame with its time span
(``frame_spans``). A ViT then has ATST's 64 x 4 patches; MAST pools only frequency (and time
only as far as ``token_frames`` allows), a masked frame's patch embeddings all get the mask
embedding (of the embedding width), and the frame loss reads its output tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastspec.masking import sample_mask
from fastspec.models import SpectrogramEncoder
from fastspec.recipes.atst_settings import ATST_DEMO, ATST_PAPER, AtstConfig, atst_common_options
from fastspec.recipes.augment import random_resize_crop
from fastspec.recipes.base import StepInput
from fastspec.recipes.byol import BYOLPair, byol_loss
from fastspec.recipes.spec import RecipeSpec

# ==== settings: section `atst` (fastspec.recipes.atst_settings), paper and demo defaults ======


def atst_frame_options(cfg) -> dict:
    """ATSTFrame's constructor arguments: the ``atst`` section (one 10 s crop by default) and
    the mask of ``masking`` (``time_span`` takes the span options)."""
    a = cfg.atst
    spans = {"span_length": a.span_length, "min_spans": a.min_spans, "overlap": a.span_overlap}
    return {
        **atst_common_options(cfg, default_crop_seconds=10.0),
        "mask_kind": cfg.masking.kind,
        "mask_ratio": cfg.masking.ratio,
        "mask_options": spans if cfg.masking.kind == "time_span" else {},
        "symmetric": a.symmetric,
    }


# the paper's base model (methods/atstframe/README.md, "Train a base model"): 6 GPUs x 144 clips
# = 864 per step, learning_rate 8e-5 per 256, 19,900 warm-up steps of 398,000, ema 0.9996, block
# (time-span) masking 0.65 in spans of 5, symmetric loss, one 10 s crop (anchor_len 10), the
# student's copy augmented (aug_stu True, aug_tea False)
_TIME_SPAN = {"masking.kind": "time_span", "masking.ratio": 0.65}
ATST_FRAME_PAPER = {
    **ATST_PAPER,
    **_TIME_SPAN,
    "atst.crop_seconds": 10.0,
    "atst.span_length": 5,
    "atst.symmetric": True,
    "atst.ema_momentum": 0.9996,
    "optim.blr": 8e-5,
    "optim.warmup_steps": 19_900,
    "train.steps": 398_000,
    "train.batch_size": 144,
    "train.global_batch": 864,
}
ATST_FRAME_DEMO = {**ATST_DEMO, **_TIME_SPAN, "atst.crop_seconds": 2.0}

# ==== end of settings ==========================================================================


def masked_token_ids(ids_restore: Tensor, n_keep: int) -> Tensor:
    """Grid indices [B, N - K] of the masked tokens, from a Mask's ``ids_restore`` [B, N].

    ``ids_restore`` places token n at its slot in ``cat(kept, masked)``; inverting the
    permutation with one scatter lists the tokens slot by slot (no sort, no sync).
    """
    batch, n = ids_restore.shape
    positions = torch.arange(n, device=ids_restore.device).expand(batch, n)
    order = torch.empty_like(ids_restore).scatter_(1, ids_restore, positions)
    return order[:, n_keep:]


class ATSTFrame(BYOLPair):
    """Encoder + mask embedding + BYOL heads + EMA teacher + augmentations of ATST-Frame.

    Args:
        encoder: any encoder, normally built with :meth:`encoder_options` (``n_mels=64``,
            ``frame_tokens=4``: one full-frequency output token per 40 ms, no class token).
        crop_frames: frames of the one crop per clip (paper: 10 s = 1001 frames), cut down to
            whole patches (1000 = 250 tokens).
        mask_kind, mask_ratio, mask_options: the mask sampler (``time_span``, 0.65, spans of 5
            tokens and at least 2 spans). Any kind that hides a fixed number of tokens per row
            works; ``group`` does not.
        symmetric: both copies through both networks, the two directions averaged (paper).
        common: the options of :class:`~fastspec.recipes.byol.BYOLPair` (heads 4096 / 256, the
            teacher's momentum, from 0.9996 for the paper's base model, the student copy's
            log-mixup-exp memory and mel-axis ``freq_scale``, ``token_frames``, ``device``,
            ``dtype``).
    """

    def __init__(
        self,
        encoder: SpectrogramEncoder,
        *,
        crop_frames: int = 1001,
        mask_kind: str = "time_span",
        mask_ratio: float = 0.65,
        mask_options: dict | None = None,
        symmetric: bool = True,
        **common,
    ):
        if mask_kind == "group":
            raise ValueError(
                "atst-frame needs a mask kind that hides the same number of tokens in every "
                "row; 'group' does not (use time_span, random, time_freq or inverse_block)"
            )
        super().__init__(encoder, crop_frames=crop_frames, **common)
        self.mask_kind = mask_kind
        self.mask_ratio = float(mask_ratio)
        if mask_options is None:
            mask_options = (
                {"span_length": 5, "min_spans": 2, "overlap": True}
                if mask_kind == "time_span"
                else {}
            )
        self.mask_options = dict(mask_options)
        self.symmetric = bool(symmetric)
        # ATST-Frame's mask_embed: [D_0] (the patch embedding's width), truncated normal std
        # 0.02; the student's alone
        factory = {"device": common.get("device"), "dtype": common.get("dtype")}
        self.mask_embed = nn.Parameter(torch.empty(encoder.embed_width, **factory))
        nn.init.trunc_normal_(self.mask_embed, std=0.02)
        # draw one mask now: a bad kind, ratio or option fails at construction, not at step 1
        grid = encoder.grid(self.crop_frames)
        probe = self._sample_mask(1, torch.Generator().manual_seed(0), "cpu")
        self.n_masked = grid[0] * grid[1] - probe.ids_keep.shape[1]  # M, the same in every row

    @staticmethod
    def encoder_options(token_frames: int = 4, **options) -> dict:
        """Contract options asked of the encoder: full-frequency tokens of ``token_frames``, and
        no class token (ATST-Frame's ``FrameAST`` has none: its frames attend only to frames)."""
        return {**BYOLPair.encoder_options(token_frames), "class_token": False}

    def _sample_mask(self, batch: int, generator, device):
        return sample_mask(
            self.mask_kind,
            batch,
            self.student_encoder.grid(self.crop_frames),
            self.mask_ratio,
            generator=generator,
            device=device,
            **self.mask_options,
        )

    # ---- views and mask ----------------------------------------------------------------------

    @torch.no_grad()
    def make_views(self, batch: StepInput) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The two copies of one crop per clip of ``batch.mel`` [B, T, F], and their mask.

        Returns clean [B, crop, F] float32, augmented [B, crop, F] float32, lengths [B] valid
        frames (None when no crop is padded), mask [B, N] bool and ids_masked [B, M] (grid
        indices of the masked tokens).
        """
        mel, generator = batch.mel, batch.generator
        clean, lengths = self.crop_views(batch, 1)  # [B, crop, F], [B] or None: all whole
        # the student's copy: mixup with a past crop, then resize crop along mel only
        augmented = self.memory(clean, generator, lengths)
        augmented = random_resize_crop(
            augmented,
            frame_lengths=lengths,
            generator=generator,
            freq_scale=self.freq_scale,
            time_scale=(1.0, 1.0),
            time_canvas=1.0,
        )
        mask = self._sample_mask(mel.shape[0], generator, mel.device)
        ids_masked = masked_token_ids(mask.ids_restore, mask.ids_keep.shape[1])
        return clean, augmented, lengths, mask.mask, ids_masked

    # ---- loss ---------------------------------------------------------------------------------

    def _frames_at(self, tokens: Tensor, ids: Tensor) -> Tensor:
        """tokens [R, 1 + N, D] (the empty class-token slot first) -> the frames at ``ids``
        [R, M]: [R, M, D]."""
        patch_tokens = tokens[:, 1:]
        return torch.gather(patch_tokens, 1, ids[..., None].expand(-1, -1, tokens.shape[-1]))

    def forward_views(
        self,
        clean: Tensor,
        augmented: Tensor,
        lengths: Tensor | None,
        mask: Tensor,
        ids_masked: Tensor,
    ) -> dict[str, Tensor]:
        """BYOL loss on the masked frames of the two copies.

        clean, augmented: [B, T, F] (T = crop frames); lengths: [B] valid frames, or None when
        no crop is padded; mask: [B, N] bool; ids_masked: [B, M] grid indices of the masked
        tokens (M the same for every row).
        Returns {"loss", "spread_student", "spread_teacher"} scalars.
        """
        padded = lengths is not None  # None: no crop padded, so no attention mask at all
        if not padded:
            lengths = torch.full((clean.shape[0],), clean.shape[1], device=clean.device)
        token_lengths = self.student_encoder.token_lengths(lengths)  # [B]
        t_of_token = ids_masked // self.student_encoder.grid(clean.shape[1])[1]  # [B, M] time index
        # masked frames of real audio; overlapping spans mask fewer than M tokens in a row, and
        # the candidates ids_masked names beyond those are left out of the loss
        real = (t_of_token < token_lengths[:, None]) & torch.gather(mask, 1, ids_masked)  # [B, M]
        if self.symmetric:  # both copies through both networks: rows [clean; augmented]
            student_in = teacher_in = torch.cat([clean, augmented])
            rows = 2
        else:
            student_in, teacher_in, rows = augmented, clean, 1
        r_lengths = token_lengths.repeat(rows) if padded else None
        r_mask = mask.repeat(rows, 1)
        r_ids, r_real = ids_masked.repeat(rows, 1), real.repeat(rows, 1)

        # the masked tokens' patch embeddings replaced by the mask embedding, before positions
        tokens = self.student_encoder.forward_features(
            student_in, token_lengths=r_lengths, mask=r_mask, mask_embed=self.mask_embed
        )
        frames = self._frames_at(tokens, r_ids)  # [R, M, D]
        p = self.predictor(self.projector(frames, r_real), r_real)  # [R, M, proj_dim]
        with torch.no_grad():
            t_tokens = self.teacher_encoder.forward_features(teacher_in, token_lengths=r_lengths)
            z = self.teacher_projector(self._frames_at(t_tokens, r_ids), r_real)  # [R, M, P]
        if self.symmetric:
            p_clean, p_aug = p.chunk(2)
            z_clean, z_aug = z.chunk(2)
            # each copy's masked frames predict the teacher's frames of the other copy
            loss = 0.5 * (byol_loss(p_clean, z_aug, real) + byol_loss(p_aug, z_clean, real))
        else:
            loss = byol_loss(p, z, real)
        return {
            "loss": loss,
            **self.spread_monitors(p, z),
        }

    def train_flops_per_clip(self, n_frames: int) -> float:
        """Training FLOPs of one clip (dense matmuls, ``fastspec.models.flops`` convention).

        Set by the crop (shorter clips are padded to it), not by ``n_frames``. Per copy that
        goes through the networks (2 symmetric, else 1 each): student encoder forward +
        backward on all tokens (masked ones carry the mask embedding), teacher encoder forward,
        and the heads on the M masked frames.
        """
        del n_frames  # the crop is crop_frames long, padded when the clip is shorter
        copies = 2 if self.symmetric else 1
        flops = self.encoders_train_flops(self.crop_frames, views=copies)
        return float(flops + self.heads_train_flops(rows=self.n_masked, views=copies))


RECIPE_SPECS = (
    RecipeSpec("atst-frame", ATSTFrame, atst_frame_options, "atst", AtstConfig,
               paper=ATST_FRAME_PAPER, demo=ATST_FRAME_DEMO),
)  # fmt: skip

__all__ = [
    "ATSTFrame",
    "RECIPE_SPECS",
    "atst_frame_options",
    "masked_token_ids",
]
