"""MAST: multiscale audio spectrogram transformer (Zhu & Omar 2023), and its registered sizes.

MAST is MViTv2 on a mel spectrogram: a patch embedding, then stages of pooling-attention blocks
(:mod:`fastspec.models.pooling_attention`). The first block of each stage pools the queries by a
stride, 2-D over time and frequency or 1-D along time, which shrinks the token grid, and widens
the channels (and heads); keys and values are pooled by an adaptive stride that shrinks as the
grid does, so early stages attend to a short key sequence; the pooled query is added back to the
attention output (residual pooling).

Contract. MAST implements :class:`~fastspec.models.contract.SpectrogramEncoder`: one output
token of the last stage covers ``patch_size`` = (frames, mel bins) of the input and is also its
**mask unit**: every pooling window lies inside one unit, so ``ids_keep`` (MAE token drop) and
``token_lengths`` (padding) work on whole units and pooling stays exact (module docstring of
``pooling_attention``). The finer patches the embedding reads are ``embed_patch_size``.
``frame_tokens=f`` asks for full-frequency output tokens of f frames (the ATST recipes' frame
tokens): frequency is pooled to one token and time only as far as f allows.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from fastspec.models.contract import BlockShape, SpectrogramEncoder, as_pair
from fastspec.models.layers import init_class_token, init_mae_, make_class_token
from fastspec.models.pooling_attention import Layout, MultiscaleBlock, UnitPool
from fastspec.models.registry import build_with_overrides, constructor_config, register_model


def frame_token_layout(frame_tokens: int, n_mels: int, transitions: int) -> dict:
    """``embed_patch_size`` and ``q_strides`` of full-frequency output tokens of ``frame_tokens``
    frames: frequency pooled by 2 at every stage transition (the embedding patch covers
    ``n_mels / 2**transitions`` bins), time by 2 at the first transitions while the embedding
    patch keeps at least 4 frames (40 ms at a 10 ms hop) and ``frame_tokens`` splits evenly."""
    if n_mels % 2**transitions:
        raise ValueError(
            f"frame_tokens needs n_mels divisible by {2**transitions} (one frequency pooling per "
            f"stage transition), got n_mels={n_mels}"
        )
    if frame_tokens < 1:
        raise ValueError(f"frame_tokens must be >= 1, got {frame_tokens}")
    time_pools, pt = 0, frame_tokens
    while time_pools < transitions and pt % 2 == 0 and pt // 2 >= 4:
        time_pools, pt = time_pools + 1, pt // 2
    strides = [(2 if i < time_pools else 1, 2) for i in range(transitions)]
    return {"embed_patch_size": (pt, n_mels // 2**transitions), "q_strides": tuple(strides)}


class MASTEncoder(SpectrogramEncoder):
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
        frame_tokens: full-frequency output tokens of this many frames; replaces
            ``embed_patch_size`` and ``q_strides`` by :func:`frame_token_layout`.
        pos_embed, max_frames: ``sincos`` fixed 2-D positions (any length) or a ``learned``
            table for inputs up to ``max_frames`` frames.
        mlp_ratio: MLP hidden width over the stage width.
        qkv_bias: bias on the QKV projections.
        norm_eps: LayerNorm epsilon.
        residual_pooling: add the pooled query to the attention output (MViTv2).
        drop_path_rate: stochastic depth of the last block (linear from 0 over the blocks).
        class_token: a learned class token; False: a masked placeholder (ATST-Frame, contract).
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
        frame_tokens: int | None = None,
        pos_embed: str = "sincos",
        max_frames: int = 1024,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        residual_pooling: bool = True,
        drop_path_rate: float = 0.0,
        class_token: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dims, depths, heads = tuple(dims), tuple(depths), tuple(heads)
        if frame_tokens is not None:
            layout = frame_token_layout(int(frame_tokens), n_mels, len(dims) - 1)
            embed_patch_size, q_strides = layout["embed_patch_size"], layout["q_strides"]
        q_strides = tuple(as_pair(s, "q_strides entry") for s in q_strides)
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
        self.kv_stride = as_pair(kv_stride, "kv_stride")
        # the mask unit, in embedding patches: the product of the query strides per axis
        unit = (math.prod(s[0] for s in q_strides), math.prod(s[1] for s in q_strides))
        self.set_geometry(embed_patch_size, unit, n_mels)
        pt, pf = self.embed_patch_size
        self.dims, self.depths, self.heads = dims, depths, heads
        self.q_strides = q_strides
        self.drop_path_rate = float(drop_path_rate)
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.norm_eps = float(norm_eps)
        self.residual_pooling = bool(residual_pooling)
        self.embed_dim = dims[-1]  # width of the output tokens, what heads and decoders read
        self.depth = sum(depths)
        self.stage_dims = dims
        self.stage_tokens = tuple(t * f for t, f in self._unit_shapes())

        factory = {"device": device, "dtype": dtype}
        self.make_positions(pos_embed, max_frames, dims[0], **factory)
        # a linear map on flattened patches == a conv with kernel = stride = patch size; it can
        # run on the gathered patches of the kept units only
        self.patch_embed = nn.Linear(pt * pf, dims[0], **factory)
        make_class_token(self, class_token, dims[0], **factory)  # cls_token [D_0]
        # one flat list (the training loop compiles ``blocks`` one by one), stages by index
        self.blocks = nn.ModuleList(
            MultiscaleBlock(**spec, **factory) for spec in self._block_specs()
        )
        self.stage_ends = [end - 1 for end in itertools.accumulate(depths)]  # last block of each
        self.norm = nn.LayerNorm(dims[-1], eps=norm_eps, **factory)
        self.init_weights()

    def _block_specs(self) -> list[dict]:
        """Constructor arguments of every block, with the strides worked out per block."""
        specs, total = [], sum(self.depths)
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
                    "class_token": self.class_token,
                    "drop_path": self.drop_path_rate * len(specs) / max(total - 1, 1),
                }
                specs.append(spec)
                dim_in = dim
        return specs

    def init_weights(self) -> None:
        """MAE init (xavier linears, zero biases, LayerNorm identity), pooling as window means,
        class token ~ N(0, 0.02)."""
        init_mae_(self)
        self.init_positions()
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, UnitPool):
                    m.init_weights()
        init_class_token(self)

    def arch_config(self) -> dict:
        """JSON-safe constructor kwargs: ``MASTEncoder(**cfg)`` rebuilds this architecture
        (``frame_tokens`` is recorded as the patch size and query strides it stands for)."""
        return constructor_config(self, derived=("frame_tokens",))

    # ---- grids --------------------------------------------------------------------------------

    def _unit_shapes(self) -> list[tuple[int, int]]:
        """(a_t, a_f) tokens per unit at the end of each stage; the last is (1, 1)."""
        a_t, a_f = self.unit_size
        shapes = []
        for stage in range(len(self.dims)):
            if stage > 0:
                st, sf = self.q_strides[stage - 1]
                a_t, a_f = a_t // st, a_f // sf
            shapes.append((a_t, a_f))
        return shapes

    def stage_grids(self, n_frames: int) -> list[tuple[int, int]]:
        """Token grid at the output of each stage; the last is :meth:`grid`."""
        t_p, f_p = self.grid(n_frames)
        return [(t_p * a_t, f_p * a_f) for a_t, a_f in self._unit_shapes()]

    # ---- contract -------------------------------------------------------------------------------

    def forward_blocks(
        self, x: Tensor, n_units: int, unit_padding: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        """x: [B, 1 + K * u_t * u_f, D_0] -> ([B, 1 + K, D] normed, per stage
        [B, K, a_t * a_f, C_s] before any norm, time-major inside the unit)."""
        b = x.shape[0]
        layout: Layout = (n_units, *self.unit_size)
        stages = []
        for i, block in enumerate(self.blocks):
            x, layout = block(x, layout, unit_padding)
            if i in self.stage_ends:
                stages.append(x[:, 1:].reshape(b, n_units, layout[1] * layout[2], x.shape[-1]))
        return self.norm(x), stages

    def block_tokens(self, block_output) -> Tensor:
        """A multiscale block returns (tokens, layout): the tokens."""
        return block_output[0]

    def block_shapes(self) -> list[BlockShape]:
        return [
            BlockShape(
                b.dim_in,
                b.dim_out,
                b.q_stride[0] * b.q_stride[1],
                b.kv_stride[0] * b.kv_stride[1],
                int(b.dim_out * self.mlp_ratio),
            )
            for b in self.blocks
        ]


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
