"""The encoder contract: what every encoder offers, and all that recipes, export and HEAR use.

Every encoder (:class:`~fastspec.models.vit.ViTEncoder`, :class:`~fastspec.models.mast.MASTEncoder`)
is a :class:`SpectrogramEncoder`. Recipes, :mod:`fastspec.encoder` and :mod:`fastspec.hear` see
encoders only through the members documented here; none imports a concrete encoder class or
tests for one.

Geometry. A log-mel ``[B, T, F]`` (frames x mel bins) is cut into **embedding patches** of
``embed_patch_size`` = (pt, pf) on the embedding grid ``(T / pt, F / pf)``. An **output token**
covers ``unit_size`` = (u_t, u_f) embedding patches, i.e. ``patch_size`` = (pt u_t, pf u_f)
frames x mel bins; output tokens lie on :meth:`grid` ``(T_p, F_p)``, token ``n = t * F_p + f``
(time-major). An output token is also the **mask unit**: masks (``ids_keep``) and padding
(``token_lengths``) act on whole output tokens, so a pooling encoder computes exactly on the kept,
valid ones. A ViT has ``unit_size = (1, 1)``: its output tokens are its patches.

Tokens inside the network are grouped by unit: ``[B, 1 + K * a, C]`` with a class token first,
then K units of ``a = a_t * a_f`` tokens each (time-major inside the unit); ``a`` shrinks as a
pooling encoder pools, down to 1 at the output.

Members (all encoders):

- geometry: ``patch_size``, ``embed_patch_size``, ``unit_size``, ``n_mels``, ``embed_dim``
  (output width), ``embed_width`` (patch-embedding width), ``patch_dim``, ``frame_hop``,
  :meth:`grid`, :meth:`embed_grid`, :meth:`pad_frames`, :meth:`token_lengths`, :meth:`patchify` / :meth:`unpatchify` (output-token footprints);
- frames: :meth:`frame_tokens` (one token per time step, the mean over frequency) and
  :meth:`frame_spans` (the frames each covers), so frame-level recipes and timestamps work for
  pooling encoders;
- embedding: :meth:`embed` (fused drop + patch embedding of the kept units, positions added,
  optionally a mask embedding in place of masked tokens' patch embeddings);
- forward: :meth:`forward_multiscale` (output and per-stage tokens), :meth:`forward_features`
  (output only), over the kept units (``ids_keep``) or the full sequence with a key-padding mask
  (``token_lengths``); ``stage_dims``, ``stage_tokens`` and ``stage_ends`` describe the stages;
- per-block outputs of the last stage: :meth:`record_blocks`;
- cost: :meth:`forward_flops` and :meth:`train_flops`, the analytic dense-matmul FLOPs of one
  clip (what MFU is computed from);
- constructor options every encoder takes: ``n_mels``, ``frame_tokens`` (full-frequency output
  tokens of that many frames, the layout ATST recipes ask for), ``pos_embed`` (``sincos`` fixed
  or ``learned`` up to ``max_frames``), ``qkv_bias``, ``drop_path_rate``, ``class_token``,
  ``device``, ``dtype``; :meth:`arch_config` gives the kwargs that rebuild the architecture.

Without a class token (``class_token=False``, ATST-Frame) slot 0 stays, so the layout is the same
for all, but as a placeholder: a zero buffer, a key masked in every block (patch tokens compute
what they would without it; attention always gets a padding mask), zero in the output.

A subclass builds ``patch_embed`` (``nn.Linear(pt * pf, D_0)``), ``cls_token`` ([D_0],
:func:`~fastspec.models.layers.make_class_token`), ``blocks`` and ``norm``, calls :meth:`set_geometry`
and :meth:`make_positions`, and implements :meth:`forward_blocks`,
:meth:`block_shapes` and :meth:`arch_config`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastspec.models.patch_embed import kept_patch_embedding
from fastspec.models.pos_embed import cached_sincos_2d

POSITIONS = ("sincos", "learned")


def as_pair(value, name: str) -> tuple[int, int]:
    """``value`` (an int or two) as a pair of positive ints; ValueError naming ``name``."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair


def pad_frames(mel: Tensor, multiple: int, min_frames: int = 0, value: float = 0.0) -> Tensor:
    """Pad the time axis at the end so patches tile it: [B, T, F] -> [B, T', F].

    ``T'`` is the smallest multiple of ``multiple`` that is ``>= max(T, min_frames)``; the new
    frames hold ``value`` (0 = the mean of a normalised log-mel). Returns ``mel`` itself when
    nothing is added.
    """
    if mel.dim() != 3:
        raise ValueError(f"pad_frames: mel must be [B, T, F], got shape {tuple(mel.shape)}")
    if multiple < 1:
        raise ValueError(f"pad_frames: multiple must be >= 1, got {multiple}")
    target = -(-max(mel.shape[1], min_frames) // multiple) * multiple
    if target == mel.shape[1]:
        return mel
    # F.pad pads the last dims first: (F left, F right, T left, T right)
    return F.pad(mel, (0, 0, 0, target - mel.shape[1]), value=value)


@dataclass(frozen=True)
class BlockShape:
    """What one block's FLOPs depend on: widths in and out, query and key/value pooling areas
    (1 = no pooling) and MLP hidden width."""

    dim_in: int
    dim_out: int
    q_area: int = 1
    kv_area: int = 1
    hidden: int = 0


class SpectrogramEncoder(nn.Module):
    """Base class and contract of every encoder (module docstring)."""

    patch_embed: nn.Linear
    cls_token: nn.Parameter
    class_token: bool = True  # False: slot 0 is a placeholder (module docstring)
    blocks: nn.ModuleList
    norm: nn.LayerNorm
    embed_dim: int  # width of the output tokens
    stage_dims: tuple[int, ...]  # width of each stage's tokens
    stage_tokens: tuple[int, ...]  # tokens per unit at the end of each stage (last: 1)
    stage_ends: list[int]  # index of the last block of each stage

    def set_geometry(self, embed_patch_size, unit_size: tuple[int, int], n_mels: int) -> None:
        """Record the patch layout; checks that the mel axis holds whole output tokens."""
        self.embed_patch_size = as_pair(embed_patch_size, "embed_patch_size")
        self.unit_size = as_pair(unit_size, "unit_size")
        (pt, pf), (u_t, u_f) = self.embed_patch_size, self.unit_size
        self.patch_size = (pt * u_t, pf * u_f)
        self.n_mels = int(n_mels)
        if n_mels % self.patch_size[1]:
            raise ValueError(
                f"n_mels ({n_mels}) must be a multiple of {self.patch_size[1]}, the mel bins of "
                f"one output token ({pf} per embedding patch x {u_f} patches)"
            )
        self.model_name: str | None = None  # set by create_model

    def make_positions(self, pos_embed: str, max_frames: int, width: int, **factory) -> None:
        """Positions of the embedding grid: ``sincos`` (fixed 2-D sin-cos, any length, nothing
        learned) or ``learned`` (a table ``pos_table`` [T_0 max, F_0, D_0] for inputs up to
        ``max_frames`` frames, as ATST's and ASiT's reference ViTs learn theirs)."""
        if pos_embed not in POSITIONS:
            raise ValueError(f"pos_embed must be one of {POSITIONS}, got {pos_embed!r}")
        self.pos_embed, self.max_frames = pos_embed, int(max_frames)
        self.pos_table = None
        if pos_embed == "learned":
            (pt, pf), t_max = self.embed_patch_size, self.max_frames // self.embed_patch_size[0]
            if t_max < 1:
                raise ValueError(f"max_frames ({max_frames}) is shorter than one patch ({pt})")
            self.pos_table = nn.Parameter(torch.empty(t_max, self.n_mels // pf, width, **factory))

    @torch.no_grad()
    def init_positions(self) -> None:
        """A learned table starts as a truncated normal of std 0.02 (timm, ATST)."""
        if self.pos_table is not None:
            nn.init.trunc_normal_(self.pos_table, std=0.02)

    def positions(self, n_frames: int, device) -> Tensor:
        """[T_0 * F_0, D_0] positions of the embedding grid of ``n_frames`` (padded) frames."""
        t_0, f_0 = self.embed_grid(n_frames)
        if self.pos_table is None:
            return cached_sincos_2d((t_0, f_0), self.embed_width, device, self.cls_token.dtype)
        if t_0 > self.pos_table.shape[0]:
            raise ValueError(
                f"{n_frames} frames exceed the learned position table (max_frames = "
                f"{self.max_frames}); rebuild the encoder with a larger max_frames"
            )
        return self.pos_table[:t_0].flatten(0, 1)

    # ---- geometry -------------------------------------------------------------------------------

    @property
    def patch_dim(self) -> int:
        """Values per output-token footprint, ``patch_size[0] * patch_size[1]``."""
        return self.patch_size[0] * self.patch_size[1]

    @property
    def embed_width(self) -> int:
        """D_0, width of the patch embedding (of a ``mask_embed``); ``embed_dim`` for a ViT."""
        return self.patch_embed.out_features

    @property
    def frame_hop(self) -> int:
        """Frames between consecutive output time steps (the time size of an output token)."""
        return self.patch_size[0]

    def grid(self, n_frames: int) -> tuple[int, int]:
        """(T_p, F_p) grid of output tokens (mask units) for ``n_frames`` (padded) frames."""
        if n_frames % self.patch_size[0] or n_frames <= 0:
            raise ValueError(
                f"n_frames ({n_frames}) must be a positive multiple of {self.patch_size[0]}, "
                f"the frames of one output token (pad_frames pads to it)"
            )
        return n_frames // self.patch_size[0], self.n_mels // self.patch_size[1]

    def embed_grid(self, n_frames: int) -> tuple[int, int]:
        """(T_0, F_0) grid of embedding patches."""
        t_p, f_p = self.grid(n_frames)
        return t_p * self.unit_size[0], f_p * self.unit_size[1]

    def pad_frames(self, mel: Tensor, min_frames: int = 0) -> Tensor:
        """[B, T, F] -> [B, T', F], zero frames appended up to whole output tokens (and at least
        ``min_frames``); pair with :meth:`token_lengths` so the padding stays invisible."""
        return pad_frames(mel, self.patch_size[0], min_frames=min_frames)

    def token_lengths(self, frame_lengths: Tensor) -> Tensor:
        """[B] valid frames -> [B] valid output time steps: every step holding a valid frame
        (a partly filled last token is real audio), at least one."""
        hop = self.patch_size[0]
        return ((frame_lengths + hop - 1) // hop).clamp_min(1)

    def check_mel(self, mel: Tensor) -> tuple[int, int]:
        """The output grid of ``mel``; ValueError unless it is [B, T, n_mels], T whole tokens."""
        if mel.dim() != 3 or mel.shape[2] != self.n_mels or mel.shape[1] % self.patch_size[0]:
            raise ValueError(
                f"mel must be [B, T, F] with F = n_mels = {self.n_mels} and T a multiple of "
                f"{self.patch_size[0]}, got shape {tuple(mel.shape)}"
            )
        return self.grid(mel.shape[1])

    def patchify(self, mel: Tensor) -> Tensor:
        """mel: [B, T, F] -> [B, N, P_t * P_f], one row per output token in grid order, each
        footprint flattened time-major (``i_t * P_f + i_f``, a conv kernel's weight order)."""
        t_p, f_p = self.check_mel(mel)
        p_t, p_f = self.patch_size
        x = mel.reshape(mel.shape[0], t_p, p_t, f_p, p_f).permute(0, 1, 3, 2, 4)
        return x.reshape(mel.shape[0], t_p * f_p, p_t * p_f)

    def unpatchify(self, patches: Tensor, grid: tuple[int, int]) -> Tensor:
        """patches: [B, N, P_t * P_f] on ``grid`` = (T_p, F_p) -> mel [B, T_p P_t, F_p P_f]."""
        t_p, f_p = grid
        p_t, p_f = self.patch_size
        if patches.dim() != 3 or patches.shape[1:] != (t_p * f_p, p_t * p_f):
            raise ValueError(
                f"patches must be [B, {t_p * f_p}, {p_t * p_f}] for grid {tuple(grid)}, "
                f"got shape {tuple(patches.shape)}"
            )
        x = patches.reshape(-1, t_p, f_p, p_t, p_f).permute(0, 1, 3, 2, 4)
        return x.reshape(-1, t_p * p_t, f_p * p_f)

    # ---- frames ---------------------------------------------------------------------------------

    def frame_tokens(self, tokens: Tensor, n_frames: int) -> Tensor:
        """Output tokens [B, 1 + N, D] (class token first, grid order) of an input of
        ``n_frames`` (padded) frames -> [B, T_p, D], one per time step: the mean over its
        frequency tokens (a full-frequency layout has one, returned as is)."""
        t_p, f_p = self.grid(n_frames)
        grid = tokens[:, 1:].reshape(tokens.shape[0], t_p, f_p, tokens.shape[-1])
        return grid[:, :, 0] if f_p == 1 else grid.mean(dim=2)

    def frame_spans(self, n_steps: int, device=None) -> Tensor:
        """[n_steps, 2] int64: the first frame and one past the last frame of each output time
        step (``frame_hop`` frames each, back to back)."""
        start = torch.arange(n_steps, device=device) * self.frame_hop
        return torch.stack([start, start + self.frame_hop], dim=1)

    # ---- embedding ------------------------------------------------------------------------------

    def _embed_ids(self, grid: tuple[int, int], ids_keep: Tensor | None, batch: int, device):
        """Embedding-grid indices of the patches of the kept units, unit by unit, each unit's
        patches time-major: [B, K * a] (None when units are patches and all are kept)."""
        (u_t, u_f), f_0 = self.unit_size, grid[1] * self.unit_size[1]
        if (u_t, u_f) == (1, 1):
            return ids_keep
        units = ids_keep if ids_keep is not None else torch.arange(grid[0] * grid[1], device=device)
        t, f = torch.div(units, grid[1], rounding_mode="floor"), units % grid[1]
        first = t * u_t * f_0 + f * u_f  # first patch of each unit
        offsets = (
            torch.arange(u_t, device=device)[:, None] * f_0 + torch.arange(u_f, device=device)
        ).flatten()
        ids = (first[..., None] + offsets).flatten(-2)  # [(B,) K * a]
        return ids.expand(batch, -1).contiguous() if ids.dim() == 1 else ids

    def embed(
        self,
        mel: Tensor,
        ids_keep: Tensor | None = None,
        mask: Tensor | None = None,
        mask_embed: Tensor | None = None,
    ) -> Tensor:
        """Patch embedding of the kept units, positions added, class token first.

        Args:
            mel: [B, T, F], T whole output tokens.
            ids_keep: [B, K] int64 units to keep (``Mask.ids_keep`` on :meth:`grid`); the others
                are never embedded (one fused Triton kernel on CUDA). None = all N.
            mask, mask_embed: [B, N] bool and [D_0]: tokens of masked units get ``mask_embed``
                instead of their patch embedding, before the positions (ATST-Frame); only
                without ``ids_keep``.

        Returns:
            [B, 1 + K * a, D_0], units in ``ids_keep`` (or grid) order; fixed 2-D sin-cos
            positions of the embedding grid (the class token's position term is zero).
        """
        grid = self.check_mel(mel)
        b = mel.shape[0]
        if ids_keep is not None and (ids_keep.dim() != 2 or ids_keep.shape[0] != b):
            raise ValueError(
                f"ids_keep must be [B, K] with B = {b} (indices on the output-token / mask-unit grid {grid}), "
                f"got shape {tuple(ids_keep.shape)}"
            )
        weight = self.patch_embed.weight
        pos = self.positions(mel.shape[1], mel.device)
        ids = self._embed_ids(grid, ids_keep, b, mel.device)
        # under autocast the embed is bf16 and the fp32 positions promote the sum: the residual
        # stream stays fp32 (as timm/MAE), only matmuls run in low precision
        # the fused kernel adds fixed positions only; a learned table is added after it
        fixed = pos if self.pos_table is None else torch.zeros_like(pos, requires_grad=False)
        embed = kept_patch_embedding(mel.device)
        x = embed(mel, ids, weight, self.patch_embed.bias, fixed.detach(), self.embed_patch_size)
        if self.pos_table is not None:
            x = x + (pos if ids is None else pos[ids])
        if mask is not None:
            if ids_keep is not None or mask.shape != (b, grid[0] * grid[1]):
                raise ValueError(
                    f"mask must be [B, N] = [{b}, {grid[0] * grid[1]}] without ids_keep, got "
                    f"{tuple(mask.shape)}"
                )
            a = self.unit_size[0] * self.unit_size[1]
            pos_kept = pos if ids is None else pos[ids]  # [(B,) N * a, D_0]
            x = torch.where(mask.repeat_interleave(a, dim=1)[..., None], mask_embed + pos_kept, x)
        cls = self.cls_token.to(x.dtype).expand(b, 1, -1)
        return torch.cat([cls, x], dim=1)

    # ---- forward --------------------------------------------------------------------------------

    def forward_blocks(
        self, x: Tensor, n_units: int, unit_padding: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        """The trunk: x [B, 1 + K * a, D_0] -> (output [B, 1 + K, D] after the final norm,
        per stage [B, K, a_s, C_s] before any norm). unit_padding: [B, K] bool, True = padding."""
        raise NotImplementedError

    def forward_multiscale(
        self,
        mel: Tensor,
        ids_keep: Tensor | None = None,
        token_lengths: Tensor | None = None,
        mask: Tensor | None = None,
        mask_embed: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Encode, returning the output and every stage's tokens.

        Args:
            mel: [B, T, F] log-mel, T whole output tokens (:meth:`pad_frames`), F = n_mels.
            ids_keep: [B, K] units to encode (the rest dropped before the embedding); None = all.
            token_lengths: [B] valid output time steps; units with ``t >= token_lengths[b]`` are
                padding that no token attends to (their own outputs are unspecified).
            mask, mask_embed: see :meth:`embed`.

        Returns:
            out: [B, 1 + K (or N), D] after the final LayerNorm, class token (or zero) first.
            stages: per stage [B, K, a_s, C_s] (``stage_tokens``, ``stage_dims``), the last
                with ``a_s = 1``.
        """
        t_p, f_p = self.check_mel(mel)
        b = mel.shape[0]
        x = self.embed(mel, ids_keep, mask, mask_embed)
        n_units = t_p * f_p if ids_keep is None else ids_keep.shape[1]
        unit_padding = None
        if token_lengths is not None:
            if token_lengths.shape != (b,):
                raise ValueError(
                    f"token_lengths must be [B] = [{b}], got shape {tuple(token_lengths.shape)}"
                )
            units = ids_keep if ids_keep is not None else torch.arange(n_units, device=mel.device)
            t_of_unit = torch.div(units, f_p, rounding_mode="floor")  # [K] or [B, K]
            unit_padding = t_of_unit.expand(b, n_units) >= token_lengths.to(mel.device)[:, None]
        if not self.class_token and unit_padding is None:  # the placeholder is always masked
            unit_padding = torch.zeros(b, n_units, dtype=torch.bool, device=mel.device)
        out, stages = self.forward_blocks(x, n_units, unit_padding)
        if not self.class_token:  # zero, not the placeholder's meaningless output
            out = torch.cat([torch.zeros_like(out[:, :1]), out[:, 1:]], dim=1)
        return out, stages

    def forward_features(self, mel: Tensor, *args, **kwargs) -> Tensor:
        """[B, T, F] -> [B, 1 + K (or N), D]: :meth:`forward_multiscale` (same arguments:
        ``ids_keep``, ``token_lengths``, ``mask``, ``mask_embed``) without the stages."""
        return self.forward_multiscale(mel, *args, **kwargs)[0]

    def forward(self, mel: Tensor, ids_keep=None, token_lengths=None) -> Tensor:
        """Same as :meth:`forward_features`."""
        return self.forward_features(mel, ids_keep, token_lengths)

    def block_tokens(self, block_output) -> Tensor:
        """The tokens [B, 1 + N, C] of one block's output (a MAST block also returns a layout)."""
        return block_output

    @contextlib.contextmanager
    def record_blocks(self, n: int) -> Iterator[list[Tensor]]:
        """Inside the ``with``, every forward appends the outputs [B, 1 + N, D] of the last
        ``n`` blocks (before the final norm, class token first) to the yielded list, in block
        order (ATST's linear-evaluation features read them). The ``n`` blocks must all give
        output tokens: for a pooling encoder, blocks of its last stage."""
        last_stage = len(self.blocks) - (self.stage_ends[-2] + 1 if len(self.stage_ends) > 1 else 0)
        if not 1 <= n <= last_stage:
            raise ValueError(
                f"last blocks must be in 1..{last_stage} (the blocks that give output tokens), "
                f"got {n}"
            )
        outputs: list[Tensor] = []
        hooks = [
            block.register_forward_hook(lambda _m, _i, out: outputs.append(self.block_tokens(out)))
            for block in self.blocks[-n:]
        ]
        try:
            yield outputs
        finally:
            for hook in hooks:
                hook.remove()

    # ---- cost -----------------------------------------------------------------------------------

    def block_shapes(self) -> list[BlockShape]:
        """One :class:`BlockShape` per block, in order."""
        raise NotImplementedError

    def forward_flops(self, n_frames: int, n_units: int | None = None) -> dict[str, float]:
        """Dense-matmul FLOPs of one forward pass of one clip (2 per multiply-accumulate; norms,
        pooling sums, softmax and elementwise work left out, the MFU convention).

        Args:
            n_frames: frames of the input, padded here to whole output tokens.
            n_units: units encoded (``K`` of ``ids_keep``); None = the whole grid.

        Returns:
            {"patch_embed": 2 K a pt pf D_0, "blocks": ...}: per block, with n_in input tokens of
            width C_in and n_q query / n_kv key tokens of width C (class token included): qkv
            ``2 n_in C_in 3C``, skip projection ``2 n_in C_in C`` when widening, scores and
            weighted values ``2 * 2 n_q n_kv C``, output projection ``2 n_q C^2``, MLP
            ``2 * 2 n_q C hidden``.
        """
        t_p, f_p = self.grid(-(-n_frames // self.patch_size[0]) * self.patch_size[0])
        k = t_p * f_p if n_units is None else n_units
        a = self.unit_size[0] * self.unit_size[1]  # tokens per unit at the block input
        pt, pf = self.embed_patch_size
        patch_embed = 2.0 * k * a * pt * pf * self.embed_width
        blocks = 0.0
        for s in self.block_shapes():
            c_in, c = s.dim_in, s.dim_out
            n_in, n_q, n_kv = 1 + k * a, 1 + k * a // s.q_area, 1 + k * a // s.kv_area
            blocks += 2.0 * n_in * c_in * 3 * c + (2.0 * n_in * c_in * c if c_in != c else 0.0)
            blocks += 4.0 * n_q * n_kv * c + 2.0 * n_q * c * c + 4.0 * n_q * c * s.hidden
            a //= s.q_area
        return {"patch_embed": patch_embed, "blocks": blocks}

    def train_flops(self, n_frames: int, n_units: int | None = None) -> float:
        """Forward + backward FLOPs of one clip: 3x the blocks, 2x the patch embedding (its
        input, the mel, needs no gradient)."""
        f = self.forward_flops(n_frames, n_units)
        return 3.0 * f["blocks"] + 2.0 * f["patch_embed"]

    def arch_config(self) -> dict:
        """JSON-safe constructor kwargs that rebuild this architecture."""
        raise NotImplementedError
