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
