"""Analytic FLOP counts, for the MFU that training logs.

Only dense matrix multiplies are counted (the convention of the MFU literature: PaLM appendix B,
nanoGPT's ``estimate_mfu``); norms, softmax and elementwise work are left out.
"""

from __future__ import annotations


def transformer_train_flops(n_tokens: int, dim: int, depth: int, mlp_ratio: float = 4.0) -> float:
    """FLOPs of forward + backward through ``depth`` pre-norm blocks for one sequence.

    Per block, forward, with n tokens of width d and an MLP of width r*d:
      qkv and output projections  2 * n * 4 d^2
      MLP                         2 * n * 2 r d^2
      scores QK^T and weights x V 2 * 2 n^2 d
    Backward costs twice the forward, so training is 3x.
    """
    n, d = n_tokens, dim
    forward = 2 * n * 4 * d * d + 2 * n * 2 * mlp_ratio * d * d + 4 * n * n * d
    return 3.0 * depth * forward


def mae_decoder_train_flops(decoder, n_keep: int, n_tokens: int) -> float:
    """Forward + backward FLOPs of :class:`~fastspec.models.decoder.MAEDecoder` for one clip
    with ``n_keep`` kept units of ``n_tokens``: the input projection of the kept tokens and the
    class token, the earlier stages' fusion projections of the kept units, the blocks over the
    full grid plus the class token, and the prediction head (every matmul 3x)."""
    d = decoder.decoder_dim
    flops = 3 * 2 * (n_keep + 1) * decoder.encoder_dim * d
    for a, c in zip(decoder.stage_tokens, decoder.stage_dims):
        flops += 3 * 2 * n_keep * a * c * d
    flops += transformer_train_flops(n_tokens + 1, d, decoder.depth, decoder.mlp_ratio)
    return float(flops + 3 * 2 * n_tokens * d * decoder.patch_dim)
