"""ASiT (Atito et al. 2022): group masked model learning with local-global self-distillation.

One training step, as the paper's code (``Sara-Ahmed/ASiT``: ``main_ASiT.py``, ``losses.py``,
``data_transformations.py``, ``utils.collate_batch``) runs it, with the CPU data path moved onto
the device:

1. **Views, from the waveform** (:meth:`ASiT.waveform_views`, which the training loop calls
   before its front end). With probability 1/2 the clip's samples are rolled by a shift uniform
   over 0..L (``dataloader.py``); then two random crops of 6 s of samples are cut
   (``data_transformations.py``: ``RandomResizedCrop``, an offset only), each turned into Kaldi
   128-mel features by the front end and cut to 592 frames = 37 patches of 16 (the paper's
   ``num_frames``). Crops are stacked crop-major: row ``v * B + b`` is crop ``v`` of clip ``b``.
2. **Group masking (GMML).** Each crop gets its own rectangles covering 50-70 % of its bins,
   filled with zeros (the paper's ``drop_type``; or noise); then, with probability
   ``paste_prob`` (1/2), a crop is instead corrupted with rectangles covering ``paste_ratio``
   (30 %) of it, filled with the same bins of another clip's crop (``collate_batch``'s
   ``drop_replace``). Masked regions stay in the sequence: the student sees every patch.
3. **Teacher** (an EMA copy of the student encoder + distillation head, no autograd state,
   always in eval mode: the paper builds it without the student's stochastic depth) encodes
   the clean crops; the **student** the corrupted ones.
4. **Losses**, computed in float32:

   - *global*: DINO cross-entropy between the teacher's class-token distribution of one crop
     and the student's of the other crop, both ways, averaged
     (``softmax((t - c) / tau_t)`` against ``log_softmax(s / tau_s)``);
   - *local*: the same cross-entropy per patch token, teacher and student on the same crop
     and patch, averaged over every patch (masked or not), with its own prototypes and center;
   - *reconstruction*: L1 between the clean crop and the student's patch tokens decoded by a
     light head (MLP to a 128-wide bottleneck, then a per-patch linear map to the 16 x 16
     bins), averaged over the masked bins.

   ``loss = global + local + 2 * reconstruction`` (the weights of ``main_ASiT.py``).
5. **Schedules**, through the training loop's hooks: the teacher temperature warms up linearly
   from 0.04 to 0.07 over the first 30 % of the run (30 of 100 epochs) (``before_step``); after
   each optimizer step the teacher follows the student with a momentum on a cosine from 0.996
   to 1 (``after_step``, one fused ``_foreach_lerp_`` pass). The weight-decay cosine (0.04 to
   0.4) is the loop's ``optim.weight_decay_end``. Centers follow the batch mean of the
   teacher's outputs with momentum 0.9, updated in ``forward`` after the loss has used them.

Collapse monitors (teacher entropy, marginal entropy, embedding spread) are returned with the
loss terms; ``health`` turns them into warnings.

**The exported encoder is the teacher's.** The paper publishes no evaluation code of its own;
ASiT is built on DINO's code (same head, losses, schedules and checkpoint layout, which saves
``teacher`` and ``student``), and DINO's evaluations load ``checkpoint_key="teacher"`` because
the EMA teacher gives the better features (DINO, section 5.2). So :attr:`ASiT.encoder`, the
module the training loop exports, is the teacher's backbone; the trained student is
``ASiT.student.encoder``. Both are in every checkpoint.

Where this differs from the paper's code: the Kaldi front end removes each frame's DC offset
but not first each crop's mean (a no-op after it, up to rounding); the pasted clip is always
another clip of the batch (the paper's ``randint`` may draw the crop itself); the
reconstruction head's last layer has a bias per bin (the paper's transposed convolution shares
one); its ``freeze_last_layer`` names parameters ``last_layer`` that ASiT's head does not have,
so the paper's code never freezes them: ``freeze_last_layer=0`` is the faithful default.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastspec.masking import apply_group_mask, sample_mask
from fastspec.masking.clip_rng import row_chunks, uniform_rows, view_rows
from fastspec.recipes.asit_heads import LocalGlobalHead, ReconstructionHead, StudentBranch
from fastspec.recipes.asit_losses import (
    global_distillation_loss,
    local_distillation_loss,
    masked_l1_loss,
    update_center,
)
from fastspec.recipes.asit_settings import ASIT_DEMO, ASIT_PAPER, FILLS, AsitConfig, asit_options
from fastspec.recipes.base import Recipe, StepInput
from fastspec.recipes.collective import (
    gather_view_major,
    rank,
)
from fastspec.recipes.monitors import (
    collapse_warnings,
    embedding_spread,
    marginal_entropy,
    softmax_entropy,
)
from fastspec.recipes.spec import RecipeSpec
from fastspec.recipes.teacher import EMATeacher, ema_momentum, warmup_then_constant
from fastspec.recipes.views import random_crops, random_roll

# ---- the recipe ---------------------------------------------------------------------------------


class ASiT(Recipe):
    """Views, student, EMA teacher, heads and losses of the ASiT recipe.

    Args:
        encoder: any encoder of the contract (``fastspec.models.create_model``), the student;
            the teacher is a copy made here. Its output tokens carry the local distillation and
            the reconstruction (one per ``patch_size`` footprint: a 16x16 ViT patch, a MAST
            mask unit), and GMML's rectangles are counted per output token.
        crop_samples: samples per waveform crop (6 s at 32 kHz: 192,000).
        crop_frames: frames kept of each crop's features, rounded down to whole output tokens
            (6 s of the Kaldi preset: 598 frames -> 592 with 16-frame patches, the paper's
            ``num_frames``).
        roll_prob: probability that a clip's waveform is rolled before cropping (1/2).
        mask_kind, mask_ratio: the mask sampler and the top of its band (``group``, 0.7: the
            paper's ``drop_perc``). Other kinds mask whole patches.
        mask_min_ratio, max_block: GMML's band bottom (0.5) and largest rectangle side (0.3).
        fill: what covers the masked bins: ``zeros`` (the paper's default) or ``noise`` N(0, 1).
        paste_prob, paste_ratio: probability that a crop is corrupted by pasting another clip's
            bins instead (1/2), and the fraction those rectangles cover (0.3); 0 disables it.
        out_dim_global, out_dim_local: prototypes of the class-token and patch-token outputs
            (8192, 1024).
        head_hidden_dim, head_bottleneck_dim: the distillation head's MLP (2048, 256).
        rec_hidden_dim, rec_bottleneck_dim: the reconstruction head's MLP (768, 128).
        student_temp: student softmax temperature (0.1).
        teacher_temp, warmup_teacher_temp, teacher_temp_warmup: teacher temperature, linear
            from ``warmup_teacher_temp`` (0.04) to ``teacher_temp`` (0.07) over the first
            ``teacher_temp_warmup`` fraction of the run (0.3), then constant.
        center_momentum: EMA momentum of both centers (0.9).
        ema_momentum: base teacher momentum, raised on a cosine to 1 over the run (0.996).
        freeze_last_layer: fraction of the run during which the prototypes get no update
            (DINO's ``freeze_last_layer``; 0, see the module docstring).
        global_weight, local_weight, recon_weight: loss weights (1, 1, 2).
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        crop_samples: int = 192_000,
        crop_frames: int = 592,
        roll_prob: float = 0.5,
        mask_kind: str = "group",
        mask_ratio: float = 0.7,
        mask_min_ratio: float = 0.5,
        max_block: float = 0.3,
        fill: str = "zeros",
        paste_prob: float = 0.5,
        paste_ratio: float = 0.3,
        out_dim_global: int = 8192,
        out_dim_local: int = 1024,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        rec_hidden_dim: int = 768,
        rec_bottleneck_dim: int = 128,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup: float = 0.3,
        center_momentum: float = 0.9,
        ema_momentum: float = 0.996,
        freeze_last_layer: float = 0.0,
        global_weight: float = 1.0,
        local_weight: float = 1.0,
        recon_weight: float = 2.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        pt = encoder.frame_hop
        if crop_frames < pt:
            raise ValueError(f"crop_frames ({crop_frames}) must be at least one patch ({pt})")
        if crop_samples < 1:
            raise ValueError(f"crop_samples must be >= 1, got {crop_samples}")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        for name, value in {"paste_prob": paste_prob, "teacher_temp_warmup": teacher_temp_warmup,
                            "freeze_last_layer": freeze_last_layer,
                            "roll_prob": roll_prob}.items():  # fmt: skip
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 < paste_ratio < 1.0:
            raise ValueError(f"paste_ratio must be in (0, 1), got {paste_ratio}")
        if min(student_temp, teacher_temp, warmup_teacher_temp) <= 0:
            raise ValueError("temperatures must be > 0")
        if not (0.0 <= center_momentum < 1.0 and 0.0 <= ema_momentum <= 1.0):
            raise ValueError(
                f"center_momentum must be in [0, 1) and ema_momentum in [0, 1], got "
                f"{center_momentum} and {ema_momentum}"
            )
        self.crop_samples, self.roll_prob = crop_samples, roll_prob
        self.crop_frames = crop_frames // pt * pt  # whole patches, as the paper's 592
        self.mask_kind, self.mask_ratio = mask_kind, mask_ratio
        self.mask_min_ratio, self.max_block = mask_min_ratio, max_block
        self.fill, self.paste_prob, self.paste_ratio = fill, paste_prob, paste_ratio
        self.student_temp = student_temp
        self.teacher_temp, self.warmup_teacher_temp = teacher_temp, warmup_teacher_temp
        self.teacher_temp_warmup = teacher_temp_warmup
        self.center_momentum, self.ema_base = center_momentum, ema_momentum
        self.freeze_last_layer = freeze_last_layer
        self.weights = {"global": global_weight, "local": local_weight, "recon": recon_weight}
        self.out_dim_global, self.out_dim_local = out_dim_global, out_dim_local

        kw = {"device": device, "dtype": dtype}
        d = encoder.embed_dim
        head = LocalGlobalHead(d, out_dim_global, out_dim_local, hidden_dim=head_hidden_dim,
                               bottleneck_dim=head_bottleneck_dim, **kw)  # fmt: skip
        self.student = StudentBranch(encoder, head)
        self.rec_head = ReconstructionHead(
            d, encoder.patch_size, rec_hidden_dim, rec_bottleneck_dim, **kw
        )
        # the copy is taken now, before any torch.compile, and never receives a gradient
        self.teacher = EMATeacher(self.student)
        # centers are state (checkpointed, resumed); float32 whatever the model dtype
        self.register_buffer("center_global", torch.zeros(out_dim_global, device=device))
        self.register_buffer("center_local", torch.zeros(out_dim_local, device=device))
        # a tensor, not a float, so a compiled loss does not recompile as it warms up; set by
        # before_step every step, so it needs no checkpoint
        self.register_buffer(
            "teacher_temp_now", torch.tensor(warmup_teacher_temp, device=device), persistent=False
        )

    @property
    def encoder(self) -> nn.Module:
        """The encoder the run exports: the EMA teacher's backbone (module docstring)."""
        return self.teacher.module.encoder

    def train(self, mode: bool = True) -> ASiT:
        """Set the mode of the student and heads; the teacher stays in eval mode (no stochastic
        depth: the paper builds it without ``drop_path_rate``)."""
        super().train(mode)
        self.teacher.eval()
        return self

    # ---- views ------------------------------------------------------------------------------

    def _spec_mask(self, rows: int, grid, ratio: float, min_ratio: float, generator, device):
        """[rows, T, F] bool bins to corrupt, from the configured mask kind."""
        if self.mask_kind == "group":
            return sample_mask(
                "group", rows, grid, ratio, generator=generator, device=device,
                patch_size=self.student.encoder.patch_size, min_ratio=min_ratio,
                max_block=self.max_block, align=1,
            ).spec_mask  # fmt: skip
        # patch-level kinds: every bin of a masked patch is corrupted
        mask = sample_mask(self.mask_kind, rows, grid, ratio, generator=generator, device=device)
        enc = self.student.encoder
        bins = mask.mask[..., None].expand(-1, -1, enc.patch_dim)  # [rows, N, pt * pf]
        return enc.unpatchify(bins, grid)

    def waveform_views(self, wave: Tensor, lengths: Tensor | None = None, generator=None) -> Tensor:
        """The two views of each clip, as samples: the front end turns each into features.

        wave: [B, S] (float, zero-padded); lengths: [B] valid samples (None: all S);
        generator: the step's RNG (one row per clip), whose draws continue in :meth:`forward`.
        Returns [2B, crop_samples], crop-major; a crop of a clip shorter than it ends in zeros,
        which the front end featurises whole, as the paper's padded crops.
        """
        rolled, _ = random_roll(wave, self.roll_prob, lengths=lengths, generator=generator)
        crops, _ = random_crops(
            rolled, self.crop_samples, 2, lengths=lengths, generator=generator
        )  # [2, B, crop_samples]
        return crops.reshape(-1, self.crop_samples)

    def make_views(self, features: Tensor, generator=None) -> tuple[Tensor, Tensor, Tensor]:
        """The clean crops and a corrupted copy of each.

        features: [2B, T, F] of the :meth:`waveform_views` (crop-major), T >= ``crop_frames``.
        Returns (clean [2B, Tc, F], corrupted [2B, Tc, F], spec_mask [2B, Tc, F] bool),
        row ``v * B + b`` being crop ``v`` of clip ``b``.
        """
        rows, n_frames, n_bins = features.shape
        if rows % 2 or n_frames < self.crop_frames:
            raise ValueError(
                f"ASiT expects the features of two crops per clip with at least crop_frames="
                f"{self.crop_frames} frames each, got {tuple(features.shape)} (is crop_samples="
                f"{self.crop_samples} long enough for the front end?)"
            )
        batch = rows // 2
        clean = features[:, : self.crop_frames]  # whole patches, as the paper's cut to 592
        views = clean.reshape(2, batch, self.crop_frames, n_bins)
        grid = self.student.encoder.grid(self.crop_frames)
        generator = view_rows(generator, 2)  # per-clip keyed draws: one source per crop row
        spec_mask = self._spec_mask(
            rows, grid, self.mask_ratio, self.mask_min_ratio, generator, features.device
        )
        corrupted, _ = apply_group_mask(clean, spec_mask, self.fill, generator=generator)
        if self.paste_prob > 0:
            # the paper's collate_batch: with probability 1/2 a crop is re-corrupted from the
            # clean one by pasting another clip's bins (same crop index) over 30 % of it
            paste_mask = self._spec_mask(
                rows, grid, self.paste_ratio, self.paste_ratio, generator, features.device
            )
            # the partner is any other clip of the step's global batch (gathered under torchrun)
            pools = gather_view_major(clean, 2).reshape(2, -1, *clean.shape[1:])
            per_view = row_chunks(generator, 2)
            pasted = torch.cat([
                apply_group_mask(views[v], paste_mask[v * batch:(v + 1) * batch], "paste",
                                 generator=per_view[v], pool=pools[v],
                                 pool_offset=rank() * batch)[0]
                for v in range(2)
            ])  # fmt: skip
            use_paste = uniform_rows(generator, (rows,), features.device) < self.paste_prob
            corrupted = torch.where(use_paste[:, None, None], pasted, corrupted)
            spec_mask = torch.where(use_paste[:, None, None], paste_mask, spec_mask)
        return clean, corrupted, spec_mask

    # ---- forward ----------------------------------------------------------------------------

    @torch.no_grad()
    def forward_teacher(self, clean: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The teacher on the clean crops, without autograd state.

        clean: [2B, Tc, F] -> (tokens [2B, 1 + N, D], global [2B, K_g], local [2B, N, K_l]).
        """
        return self.teacher(clean)

    def forward_student(self, corrupted: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The student on the corrupted crops.

        corrupted: [2B, Tc, F] -> (global [2B, K_g], local [2B, N, K_l], reconstruction
        [2B, Tc, F] of every bin).
        """
        tokens, cls_logits, patch_logits = self.student(corrupted)
        enc = self.student.encoder
        patches = self.rec_head(tokens[:, 1:])  # [2B, N, pt * pf]
        recon = enc.unpatchify(patches, enc.grid(corrupted.shape[1]))
        return cls_logits, patch_logits, recon

    def forward_loss(
        self,
        student_out: tuple[Tensor, Tensor, Tensor],
        teacher_out: tuple[Tensor, Tensor, Tensor],
        clean: Tensor,
        spec_mask: Tensor,
    ) -> dict[str, Tensor]:
        """Weighted sum of the three losses, the terms and the monitors; updates the centers.

        student_out, teacher_out: what :meth:`forward_student` and :meth:`forward_teacher`
        return; clean: [2B, Tc, F] the reconstruction target; spec_mask: [2B, Tc, F] bool.
        """
        s_cls, s_patch, recon = student_out
        t_tokens, t_cls, t_patch = teacher_out
        temp = self.teacher_temp_now
        global_loss, t_probs = global_distillation_loss(
            s_cls, t_cls, self.center_global, self.student_temp, temp
        )
        local_loss, t_patch_probs = local_distillation_loss(
            s_patch, t_patch, self.center_local, self.student_temp, temp
        )
        recon_loss = masked_l1_loss(recon, clean, spec_mask)
        w = self.weights
        loss = w["global"] * global_loss + w["local"] * local_loss + w["recon"] * recon_loss
        if self.training:
            # after the losses used the old centers, as the paper's update_center
            update_center(self.center_global, t_cls, self.center_momentum)
            update_center(self.center_local, t_patch.reshape(-1, t_patch.shape[-1]),
                          self.center_momentum)  # fmt: skip
        return {
            "loss": loss,
            "global_loss": global_loss.detach(),
            "local_loss": local_loss.detach(),
            "recon_loss": recon_loss.detach(),
            # collapse monitors (fastspec.recipes.monitors), on device, read at log time
            "teacher_entropy": softmax_entropy(t_probs),
            "teacher_marginal_entropy": marginal_entropy(t_probs),
            "teacher_local_entropy": softmax_entropy(t_patch_probs),
            "embedding_spread": embedding_spread(t_tokens[:, 0]),
        }

    def training_loss(self, batch: StepInput) -> dict[str, Tensor]:
        """The loss of one batch: ``mel`` [2B, T, F] holds the features of the
        :meth:`waveform_views` of B clips, each view featurised whole (no ``frame_lengths``);
        the generator, the one the views were drawn from, draws the masks and fills.

        Returns {"loss", "global_loss", "local_loss", "recon_loss", and the monitors}.
        """
        if batch.frame_lengths is not None:
            raise ValueError("ASiT's views are featurised whole: frame_lengths must be None")
        clean, corrupted, spec_mask = self.make_views(batch.mel, batch.generator)
        teacher_out = self.forward_teacher(clean)
        student_out = self.forward_student(corrupted)
        return self.forward_loss(student_out, teacher_out, clean, spec_mask)

    # ---- training-loop hooks --------------------------------------------------------------

    def teacher_temperature(self, step: int, total_steps: int) -> float:
        """Teacher temperature of ``step``: linear warm-up over ``teacher_temp_warmup`` of the
        run (the paper's ``np.linspace`` over 30 of 100 epochs), then constant."""
        warmup = round(self.teacher_temp_warmup * total_steps)
        return warmup_then_constant(self.warmup_teacher_temp, self.teacher_temp, step, warmup)

    def before_step(self, step: int, total_steps: int) -> None:
        """Teacher temperature of this step; prototypes frozen during ``freeze_last_layer``."""
        # fill_ with a Python float: a kernel launch on CUDA, no host sync
        self.teacher_temp_now.fill_(self.teacher_temperature(step, total_steps))
        # requires_grad=False leaves .grad None, so AdamW skips them (DINO cancels the grads)
        trainable = step >= round(self.freeze_last_layer * total_steps)
        for layer in self.student.head.prototype_layers():
            layer.parametrizations.weight.original1.requires_grad_(trainable)

    def after_step(self, step: int, total_steps: int) -> None:
        """The teacher follows the student: momentum on a cosine from ``ema_momentum`` to 1."""
        self.teacher.update(self.student, ema_momentum(step, total_steps, self.ema_base))

    def health(self, stats: dict[str, float]) -> list[str]:
        """Collapse warnings for the logged means of the monitors."""
        return collapse_warnings(
            stats,
            spread_key="embedding_spread",
            entropy_key="teacher_entropy",
            n_prototypes=self.out_dim_global,
        )

    # ---- FLOPs ----------------------------------------------------------------------------

    def train_flops_per_clip(self, n_frames: int) -> float:
        """Training FLOPs of one clip: two crops through the teacher (forward) and the student
        (forward + backward), heads included.

        Every clip is cut into two crops of ``crop_frames`` whatever ``n_frames`` (shorter
        clips are padded), so the count does not depend on it. Dense matmul FLOPs only: the
        encoder's from the contract (``forward_flops``, ``train_flops``); a head's forward
        matmul of ``m x k`` by ``k x n`` is ``2 m k n``, its backward twice that.
        """
        enc = self.student.encoder
        t_p, f_p = enc.grid(self.crop_frames)
        n = t_p * f_p  # output tokens per crop
        head = self.student.head
        mlp = [m for m in head.mlp if isinstance(m, nn.Linear)]
        head_fwd = 2 * (n + 1) * sum(m.in_features * m.out_features for m in mlp)
        bottleneck = mlp[-1].out_features
        head_fwd += 2 * bottleneck * (self.out_dim_global + n * self.out_dim_local)
        rec = [m for m in self.rec_head.modules() if isinstance(m, nn.Linear)]
        rec_fwd = 2 * n * sum(m.in_features * m.out_features for m in rec)
        student = enc.train_flops(self.crop_frames) + 3 * (head_fwd + rec_fwd)
        teacher = sum(enc.forward_flops(self.crop_frames).values()) + head_fwd
        return float(2 * (student + teacher))


RECIPE_SPECS = (
    RecipeSpec("asit", ASiT, asit_options, "asit", AsitConfig, paper=ASIT_PAPER, demo=ASIT_DEMO),
)

__all__ = [
    "ASiT",
    "AsitConfig",
    "RECIPE_SPECS",
    "asit_options",
]
