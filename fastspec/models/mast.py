"""MAST: multiscale audio spectrogram transformer (Zhu & Omar 2023), and its registered sizes.

MAST is MViTv2 on a mel spectrogram: a patch embedding, then stages of pooling-attention blocks
(:mod:`fastspec.models.pooling_attention`). The first block of each stage pools the queries by a
stride, 2-D over time and frequency or 1-D along time, which shrinks the token grid, and widens
the channels (and heads); keys and values are pooled by an adaptive stride that shrinks as the
grid does, so early stages attend to a short key sequence; the pooled query is added back to the
attention output (residual pooling).

Interface. Recipes and the exported :class:`~fastspec.encoder.Encoder` see MAST the way they see
a ViT, at the level of its **output tokens**: one token of the last stage covers ``patch_size`` =
(frames, mel bins) of the input, ``grid(n_frames)`` is the output grid, ``patchify`` cuts the mel
into output-token footprints, ``embed_dim`` is the output width, and ``forward_features`` returns
``[B, 1 + N, D]`` in grid order, class token first. An output token is also MAST's **mask unit**:
every pooling window lies inside one unit, so ``ids_keep`` (MAE token drop) and ``token_lengths``
(padding) work on whole units and pooling stays exact (module docstring of
``pooling_attention``). The finer patches the embedding reads are ``embed_patch_size``.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from fastspec.models.layers import init_mae_
from fastspec.models.pooling_attention import Layout, MultiscaleBlock, UnitPool
from fastspec.models.pos_embed import cached_sincos_2d
from fastspec.models.registry import build_with_overrides, register_model


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair


class MASTEncoder(nn.Module):
    """Multiscale pooling-attention encoder over mel patches.

    Args:
        dims: width of each stage, e.g. (96, 192, 384, 768); ``dims[0]`` a multiple of 4
            (2-D sin-cos positions on the embedding grid).
        depths: blocks per stage.
        heads: attention heads per stage (MViTv2 doubles them with the width).
        q_strides: (st, sf) query stride at the start of stages 2, 3, ...; one pair per stage
            transition. ``(2, 2)`` pools time and frequency (2-D), ``(2, 1)`` time only (1-D).
            Their product per axis is the mask unit, in embedding patches.
        kv_stride: key/value stride of the first stage. Later blocks use
            ``max(kv_stride // cumulative q stride, 1)`` (MViTv2's adaptive stride, so every
            stage attends to keys of about the same resolution), capped so a window never
            leaves a mask unit.
        embed_patch_size: (pt, pf) frames x mel bins of each embedding patch.
        n_mels: F, mel bins of the input; a multiple of ``pf`` times the frequency unit.
        mlp_ratio: MLP hidden width over the stage width.
        qkv_bias: bias on the QKV projections.
        norm_eps: LayerNorm epsilon.
        residual_pooling: add the pooled query to the attention output (MViTv2).
        device, dtype: where and in what dtype parameters are created (``"meta"`` allocates
            nothing; then ``to_empty`` and :meth:`init_weights`).

    Positions: a fixed 2-D sin-cos table on the embedding grid, added after the patch embedding
    (as the ViT here). It needs no learned table, so any number of frames works, and it keeps
    attention a plain SDPA call (flash kernels), which a relative-position bias would not.
    """

    def __init__(
        self,
        dims: tuple[int, ...] = (96, 192, 384, 768),
        depths: tuple[int, ...] = (2, 3, 16, 3),
        heads: tuple[int, ...] = (1, 2, 4, 8),
        q_strides: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (2, 2)),
        kv_stride: tuple[int, int] | int = (4, 4),
        embed_patch_size: tuple[int, int] | int = (8, 8),
        n_mels: int = 128,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        residual_pooling: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dims, depths, heads = tuple(dims), tuple(depths), tuple(heads)
        q_strides = tuple(_pair(s, "q_strides entry") for s in q_strides)
        n_stages = len(dims)
        if not (len(depths) == len(heads) == n_stages >= 1) or len(q_strides) != n_stages - 1:
            raise ValueError(
                f"dims, depths and heads need one entry per stage and q_strides one per stage "
                f"transition; got {len(dims)} dims, {len(depths)} depths, {len(heads)} heads, "
                f"{len(q_strides)} q_strides"
            )
        if min(depths) < 1:
            raise ValueError(f"every stage needs at least one block, got depths {depths}")
        if dims[0] % 4:
            raise ValueError(f"dims[0] must be a multiple of 4 (2-D sin-cos), got {dims[0]}")
        for dim, h in zip(dims, heads):
            if dim % h:
                raise ValueError(f"stage width {dim} is not divisible by its num_heads {h}")
        self.embed_patch_size = _pair(embed_patch_size, "embed_patch_size")
        self.kv_stride = _pair(kv_stride, "kv_stride")
        # the mask unit, in embedding patches: the product of the query strides per axis
        self.unit_size = (
            math.prod(s[0] for s in q_strides),
            math.prod(s[1] for s in q_strides),
        )
        pt, pf = self.embed_patch_size
        self.patch_size = (pt * self.unit_size[0], pf * self.unit_size[1])
        if n_mels % self.patch_size[1]:
            raise ValueError(
                f"n_mels ({n_mels}) must be a multiple of {self.patch_size[1]}: the embedding "
                f"patch's {pf} mel bins times the frequency pooling {self.unit_size[1]}"
            )
        self.dims, self.depths, self.heads = dims, depths, heads
        self.q_strides = q_strides
        self.n_mels = n_mels
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.norm_eps = float(norm_eps)
        self.residual_pooling = bool(residual_pooling)
        self.embed_dim = dims[-1]  # width of the output tokens, what heads and decoders read
        self.depth = sum(depths)
        self.model_name: str | None = None  # set by create_model

        factory = {"device": device, "dtype": dtype}
        # a linear map on flattened patches == a conv with kernel = stride = patch size; it can
        # run on the gathered patches of the kept units only
        self.patch_embed = nn.Linear(pt * pf, dims[0], **factory)
        self.cls_token = nn.Parameter(torch.empty(dims[0], **factory))  # [D_0]
        # one flat list (the training loop compiles ``blocks`` one by one), stages by index
        self.blocks = nn.ModuleList(
            MultiscaleBlock(**spec, **factory) for spec in self._block_specs()
        )
        self.stage_ends = [end - 1 for end in itertools.accumulate(depths)]  # last block of each
        self.norm = nn.LayerNorm(dims[-1], eps=norm_eps, **factory)
        self.init_weights()

    def _block_specs(self) -> list[dict]:
        """Constructor arguments of every block, with the strides worked out per block."""
        specs = []
        cum = [1, 1]  # query stride so far, per axis, in embedding patches
        dim_in = self.dims[0]
        for stage, (dim, depth, n_heads) in enumerate(zip(self.dims, self.depths, self.heads)):
            for i in range(depth):
                q_stride = self.q_strides[stage - 1] if stage > 0 and i == 0 else (1, 1)
                before = tuple(cum)  # the block's input resolution
                cum = [c * s for c, s in zip(cum, q_stride)]
                # adaptive kv stride (MViTv2): the initial stride over what queries pooled so
                # far, capped at the tokens a unit holds at the block's input
                kv = tuple(
                    min(max(k // c, 1), u // b)
                    for k, c, u, b in zip(self.kv_stride, cum, self.unit_size, before)
                )
                for axis in range(2):
                    per_unit = self.unit_size[axis] // before[axis]
                    if per_unit % kv[axis]:
                        raise ValueError(
                            f"kv stride {kv} of stage {stage + 1} does not tile a mask unit of "
                            f"{self.unit_size} patches; use powers of two"
                        )
                spec = {
                    "dim_in": dim_in,
                    "dim_out": dim,
                    "num_heads": n_heads,
                    "mlp_ratio": self.mlp_ratio,
                    "q_stride": q_stride,
                    "kv_stride": kv,
                    "qkv_bias": self.qkv_bias,
                    "norm_eps": self.norm_eps,
                    "residual_pooling": self.residual_pooling,
                }
                specs.append(spec)
                dim_in = dim
        return specs

    def init_weights(self) -> None:
        """MAE init (xavier linears, zero biases, LayerNorm identity), pooling as window means,
        class token ~ N(0, 0.02)."""
        init_mae_(self)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, UnitPool):
                    m.init_weights()
            nn.init.normal_(self.cls_token, std=0.02)

    def arch_config(self) -> dict:
        """JSON-safe constructor kwargs: ``MASTEncoder(**cfg)`` rebuilds this architecture."""
        return {
            "dims": list(self.dims),
            "depths": list(self.depths),
            "heads": list(self.heads),
            "q_strides": [list(s) for s in self.q_strides],
            "kv_stride": list(self.kv_stride),
            "embed_patch_size": list(self.embed_patch_size),
            "n_mels": self.n_mels,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "norm_eps": self.norm_eps,
            "residual_pooling": self.residual_pooling,
        }

    # ---- grids --------------------------------------------------------------------------------

    @property
    def patch_dim(self) -> int:
        """Values per output-token footprint (one mask unit), ``patch_size[0] * patch_size[1]``."""
        return self.patch_size[0] * self.patch_size[1]

    def grid(self, n_frames: int) -> tuple[int, int]:
        """(T_out, F_out) grid of output tokens (= mask units) for ``n_frames`` frames."""
        if n_frames % self.patch_size[0] or n_frames <= 0:
            raise ValueError(
                f"n_frames ({n_frames}) must be a positive multiple of {self.patch_size[0]}, "
                f"the frames of one output token (mask unit)"
            )
        return n_frames // self.patch_size[0], self.n_mels // self.patch_size[1]

    def embed_grid(self, n_frames: int) -> tuple[int, int]:
        """(T_0, F_0) grid of embedding patches."""
        t_u, f_u = self.grid(n_frames)
        return t_u * self.unit_size[0], f_u * self.unit_size[1]

    def stage_grids(self, n_frames: int) -> list[tuple[int, int]]:
        """Token grid at the output of each stage; the last is :meth:`grid`."""
        t, f = self.embed_grid(n_frames)
        grids = []
        for stage in range(len(self.dims)):
            if stage > 0:
                st, sf = self.q_strides[stage - 1]
                t, f = t // st, f // sf
            grids.append((t, f))
        return grids

    def _check_mel(self, mel: Tensor) -> tuple[int, int]:
        if mel.dim() != 3 or mel.shape[2] != self.n_mels or mel.shape[1] % self.patch_size[0]:
            raise ValueError(
                f"mel must be [B, T, F] with F = n_mels = {self.n_mels} and T a multiple of "
                f"{self.patch_size[0]}, got shape {tuple(mel.shape)}"
            )
        return self.grid(mel.shape[1])

    def patchify(self, mel: Tensor) -> Tensor:
        """mel: [B, T, F] -> [B, N, P_t * P_f], one row per output token (mask unit), token
        ``n = t * F_out + f``, each footprint flattened time-major (``i_t * P_f + i_f``)."""
        t_u, f_u = self._check_mel(mel)
        p_t, p_f = self.patch_size
        x = mel.reshape(mel.shape[0], t_u, p_t, f_u, p_f).permute(0, 1, 3, 2, 4)
        return x.reshape(mel.shape[0], t_u * f_u, p_t * p_f)

    def unpatchify(self, patches: Tensor, grid: tuple[int, int]) -> Tensor:
        """patches: [B, N, P_t * P_f] on ``grid`` = (T_out, F_out) -> mel [B, T, F]."""
        t_u, f_u = grid
        p_t, p_f = self.patch_size
        if patches.dim() != 3 or patches.shape[1:] != (t_u * f_u, p_t * p_f):
            raise ValueError(
                f"patches must be [B, {t_u * f_u}, {p_t * p_f}] for grid {tuple(grid)}, "
                f"got shape {tuple(patches.shape)}"
            )
        x = patches.reshape(-1, t_u, f_u, p_t, p_f).permute(0, 1, 3, 2, 4)
        return x.reshape(-1, t_u * p_t, f_u * p_f)

    def _unit_patches(self, mel: Tensor, ids_keep: Tensor | None) -> Tensor:
        """Embedding patches grouped by unit: [B, T, F] -> [B, K * u_t * u_f, pt * pf].

        Units in grid order (all of them) or in ``ids_keep`` order; inside a unit the patches
        are time-major, each flattened time-major. Only the kept units' values are read.
        """
        t_u, f_u = self.grid(mel.shape[1])
        (u_t, u_f), (pt, pf) = self.unit_size, self.embed_patch_size
        b = mel.shape[0]
        view = mel.reshape(b, t_u, u_t, pt, f_u, u_f, pf)
        if ids_keep is None:
            x = view.permute(0, 1, 4, 2, 5, 3, 6)  # [B, T_u, F_u, u_t, u_f, pt, pf]
        else:
            # unit index n -> (t, f); advanced indices split by slices put the [B, K] index
            # dims first: [B, K, u_t, pt, u_f, pf]
            t_idx = torch.div(ids_keep, f_u, rounding_mode="floor")
            rows = torch.arange(b, device=mel.device).unsqueeze(1)  # [B, 1]
            x = view[rows, t_idx, :, :, ids_keep - t_idx * f_u].permute(0, 1, 2, 4, 3, 5)
        # explicit sizes: K may be 0 (everything masked), where -1 would be ambiguous
        n_units = t_u * f_u if ids_keep is None else ids_keep.shape[1]
        return x.reshape(b, n_units * u_t * u_f, pt * pf)

    def position_embedding(self, n_frames: int, device=None) -> Tensor:
        """Fixed 2-D sin-cos positions of the embedding grid, grouped by unit:
        [T_u * F_u, u_t * u_f, D_0] (unit in grid order, then its patches time-major)."""
        device = torch.device(device) if device is not None else self.cls_token.device
        (t_0, f_0), (t_u, f_u) = self.embed_grid(n_frames), self.grid(n_frames)
        u_t, u_f = self.unit_size
        table = cached_sincos_2d((t_0, f_0), self.dims[0], device, self.cls_token.dtype)
        table = table.view(t_u, u_t, f_u, u_f, -1).permute(0, 2, 1, 3, 4)
        return table.reshape(t_u * f_u, u_t * u_f, -1)

    # ---- forward ------------------------------------------------------------------------------

    def forward_multiscale(
        self,
        mel: Tensor,
        ids_keep: Tensor | None = None,
        token_lengths: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Encode, returning the output and every stage's tokens.

        Args:
            mel: [B, T, F] log-mel, T a multiple of ``patch_size[0]``, F = n_mels.
            ids_keep: [B, K] int64 indices on :meth:`grid` (mask units) to encode, as
                ``Mask.ids_keep`` of a mask sampled on that grid; the other units are dropped
                before the patch embedding. None = all N units.
            token_lengths: [B] int, valid time steps of :meth:`grid` per clip; units with
                ``t >= token_lengths[b]`` are padding and no token attends to them. Their own
                outputs are unspecified.

        Returns:
            out: [B, 1 + K, D] (or [B, 1 + N, D]) after the final LayerNorm, class token
                first, then one token per unit in ``ids_keep`` (or grid) order.
            stages: per stage, [B, K, a_t * a_f, C_s], the tokens of each unit at the end of
                that stage (before any norm), time-major inside the unit; the last has
                ``a_t * a_f = 1``.
        """
        t_u, f_u = self._check_mel(mel)
        b = mel.shape[0]
        pos = self.position_embedding(mel.shape[1], mel.device)  # [N, u_t * u_f, D_0]
        if ids_keep is not None:
            if ids_keep.dim() != 2 or ids_keep.shape[0] != b:
                raise ValueError(
                    f"ids_keep must be [B, K] with B = {b} (indices on the mask-unit grid "
                    f"{(t_u, f_u)}), got shape {tuple(ids_keep.shape)}"
                )
            pos = pos[ids_keep]  # [B, K, u_t * u_f, D_0]
        n_units = t_u * f_u if ids_keep is None else ids_keep.shape[1]
        patches = self._unit_patches(mel, ids_keep).to(self.patch_embed.weight.dtype)
        # under autocast the embed is bf16 and the fp32 positions promote the sum: the residual
        # stream stays fp32, only matmuls run in low precision
        pos = pos.reshape(b if ids_keep is not None else 1, patches.shape[1], pos.shape[-1])
        x = self.patch_embed(patches) + pos
        cls = self.cls_token.to(x.dtype).expand(b, 1, -1)  # its position term is zero
        x = torch.cat([cls, x], dim=1)  # [B, 1 + K * u_t * u_f, D_0]

        unit_padding = None
        if token_lengths is not None:
            if token_lengths.shape != (b,):
                raise ValueError(
                    f"token_lengths must be [B] = [{b}], got shape {tuple(token_lengths.shape)}"
                )
            units = ids_keep if ids_keep is not None else torch.arange(n_units, device=mel.device)
            t_of_unit = torch.div(units, f_u, rounding_mode="floor")  # [K] or [B, K]
            unit_padding = t_of_unit.expand(b, n_units) >= token_lengths.to(mel.device)[:, None]

        layout: Layout = (n_units, *self.unit_size)
        stages = []
        for i, block in enumerate(self.blocks):
            x, layout = block(x, layout, unit_padding)
            if i in self.stage_ends:
                stages.append(x[:, 1:].reshape(b, n_units, layout[1] * layout[2], x.shape[-1]))
        return self.norm(x), stages

    def forward_features(
        self,
        mel: Tensor,
        ids_keep: Tensor | None = None,
        token_lengths: Tensor | None = None,
    ) -> Tensor:
        """[B, T, F] -> [B, 1 + K (or N), D]: :meth:`forward_multiscale` without the stages.

        ``ids_keep`` and ``token_lengths`` are on :meth:`grid` (output tokens = mask units),
        exactly as a ViT's are on its patch grid, so recipes and the exported encoder use MAST
        unchanged.
        """
        return self.forward_multiscale(mel, ids_keep, token_lengths)[0]

    def forward(
        self,
        mel: Tensor,
        ids_keep: Tensor | None = None,
        token_lengths: Tensor | None = None,
    ) -> Tensor:
        """Same as :meth:`forward_features`: [B, T, F] -> [B, 1 + K (or N), D]."""
        return self.forward_features(mel, ids_keep, token_lengths)

    # ---- analytic cost --------------------------------------------------------------------------

    def forward_flops(self, n_frames: int, n_units: int | None = None) -> dict[str, float]:
        """Dense-matmul FLOPs of one forward pass of one clip (the MFU convention of
        ``fastspec.models.flops``: 2 per multiply-accumulate; norms, pooling sums, softmax and
        elementwise work left out).

        Args:
            n_frames: frames of the (padded) input; a multiple of ``patch_size[0]``.
            n_units: mask units encoded (``K`` of ``ids_keep``); None = all of :meth:`grid`.

        Returns:
            {"patch_embed": ..., "blocks": ...}; per block with n_in input tokens of width
            C_in, n_q query and n_kv key tokens of width C (class token included):
            qkv ``2 n_in C_in 3C``, skip projection ``2 n_in C_in C`` when widening, scores and
            weighted values ``2 * 2 n_q n_kv C``, output projection ``2 n_q C^2``, MLP
            ``2 * 2 n_q r C^2``.
        """
        t_u, f_u = self.grid(-(-n_frames // self.patch_size[0]) * self.patch_size[0])
        k = t_u * f_u if n_units is None else n_units
        pt, pf = self.embed_patch_size
        a = self.unit_size[0] * self.unit_size[1]  # tokens per unit at the block input
        patch_embed = 2.0 * k * a * pt * pf * self.dims[0]
        blocks = 0.0
        for block in self.blocks:
            c_in, c = block.dim_in, block.dim_out
            q_area = block.q_stride[0] * block.q_stride[1]
            kv_area = block.kv_stride[0] * block.kv_stride[1]
            n_in, n_q, n_kv = 1 + k * a, 1 + k * a // q_area, 1 + k * a // kv_area
            blocks += 2.0 * n_in * c_in * 3 * c
            if c_in != c:
                blocks += 2.0 * n_in * c_in * c
            hidden = int(c * self.mlp_ratio)
            blocks += 4.0 * n_q * n_kv * c + 2.0 * n_q * c * c + 4.0 * n_q * c * hidden
            a //= q_area
        return {"patch_embed": patch_embed, "blocks": blocks}


# ---- registered sizes -----------------------------------------------------------------------
# The stage layouts are MViTv2-T / -S / -B (Li et al. 2022), which MAST adapts to spectrograms.
# Parameter counts do not depend on the number of frames; MACs are for 1024 frames x 128 mel
# (`fastspec info --macs NAME --input 1024x128`), where ViT-B/16 needs 48.5 G.


def _mast(name: str, defaults: dict, overrides: dict, device, dtype) -> MASTEncoder:
    return build_with_overrides(MASTEncoder, name, defaults, overrides, device=device, dtype=dtype)


# shared by the three sizes: 8x8 embedding patches (128 x 16 for 1024 x 128), three 2-D query
# poolings (mask unit and output token = 8 x 8 patches = 64 frames x 64 mel, grid 16 x 2),
# keys/values pooled 4x4 in stage 1, 2x2 in stage 2, not after
_LAYOUT = {
    "dims": (96, 192, 384, 768),
    "heads": (1, 2, 4, 8),
    "q_strides": ((2, 2), (2, 2), (2, 2)),
    "kv_stride": (4, 4),
    "embed_patch_size": (8, 8),
}


@register_model
def mast_mini(*, device=None, dtype=None, **overrides) -> MASTEncoder:
    """MAST-Mini for the CPU demo and tests: 4 stages of 1, 1, 2, 1 blocks (5 blocks), widths
    32, 64, 128, D 256 out, heads 1, 2, 4, 8 (head dim 32), MLP ratio 4; 8x8 embedding
    patches; query stride (2, 2) at each stage start; kv stride 4x4, 2x2, 1, 1; output token =
    64 frames x 64 mel. About 1.2 M parameters, 0.24 G MACs at 1024 x 128."""
    defaults = {**_LAYOUT, "dims": (32, 64, 128, 256), "depths": (1, 1, 2, 1)}
    return _mast("mast_mini", defaults, overrides, device, dtype)


@register_model
def mast_tiny(*, device=None, dtype=None, **overrides) -> MASTEncoder:
    """MAST-T (MViTv2-T layout): 4 stages of 1, 2, 5, 2 blocks (10 blocks), widths 96, 192,
    384, D 768 out, heads 1, 2, 4, 8 (head dim 96), MLP ratio 4; 8x8 embedding patches; query
    stride (2, 2) at each stage start; kv stride 4x4, 2x2, 1, 1; output token = mask unit =
    64 frames x 64 mel. About 23.3 M parameters, 2.87 G MACs at 1024 x 128 (0.059x ViT-B)."""
    defaults = {**_LAYOUT, "depths": (1, 2, 5, 2)}
    return _mast("mast_tiny", defaults, overrides, device, dtype)


@register_model
def mast_small(*, device=None, dtype=None, **overrides) -> MASTEncoder:
    """MAST-S (MViTv2-S layout): 4 stages of 1, 2, 11, 2 blocks (16 blocks), widths 96, 192,
    384, D 768 out, heads 1, 2, 4, 8, MLP ratio 4; 8x8 embedding patches; query stride (2, 2)
    at each stage start; kv stride 4x4, 2x2, 1, 1; output token = 64 frames x 64 mel. About
    33.9 M parameters, 4.32 G MACs at 1024 x 128 (0.089x ViT-B)."""
    defaults = {**_LAYOUT, "depths": (1, 2, 11, 2)}
    return _mast("mast_small", defaults, overrides, device, dtype)


@register_model
def mast_base(*, device=None, dtype=None, **overrides) -> MASTEncoder:
    """MAST-B (MViTv2-B layout): 4 stages of 2, 3, 16, 3 blocks (24 blocks), widths 96, 192,
    384, D 768 out, heads 1, 2, 4, 8, MLP ratio 4; 8x8 embedding patches; query stride (2, 2)
    at each stage start; kv stride 4x4, 2x2, 1, 1; output token = 64 frames x 64 mel. About
    50.5 M parameters, 6.29 G MACs at 1024 x 128 (0.130x ViT-B). For 1-D pooling along time
    pass ``q_strides=((2, 1),) * 3, kv_stride=(4, 1)``."""
    defaults = {**_LAYOUT, "depths": (2, 3, 16, 3)}
    return _mast("mast_base", defaults, overrides, device, dtype)
