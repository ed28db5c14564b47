"""ASiT's heads: the local-global distillation head (class token and every output token), the
reconstruction head of the masked bins, and the student branch the EMA teacher copies
(``Sara-Ahmed/ASiT``: ``CLSHead``, ``RECHead``). Any encoder of the contract: a head reads the
encoder's output tokens, one per output-token footprint (``encoder.patch_size``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fastspec.models import SpectrogramEncoder
from fastspec.recipes.heads import DINOHead, gelu_mlp


class LocalGlobalHead(DINOHead):
    """ASiT's distillation head: one MLP over every token, two sets of prototypes.

    ``in_dim -> hidden -> hidden -> bottleneck`` (GELU between), L2-normalised, then the class
    token goes through ``out_dim_global`` weight-normalised prototypes and each patch token
    through ``out_dim_local`` others (ASiT's ``CLSHead``: ``cls_layer`` and ``data_layer``).
    """

    def __init__(self, in_dim: int, out_dim_global: int, out_dim_local: int, **options):
        """options: :class:`DINOHead`'s (``hidden_dim``, ``bottleneck_dim``, ``n_layers``,
        ``norm_last_layer``, ``device``, ``dtype``), shared by both sets of prototypes."""
        super().__init__(in_dim, out_dim_global, **options)
        self.local_layer = self.make_prototypes(out_dim_local)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens: [R, 1 + N, D] (class token first) -> (global [R, K_g], local [R, N, K_l])."""
        z = F.normalize(self.mlp(tokens), dim=-1)
        return self.last_layer(z[:, 0]), self.local_layer(z[:, 1:])

    def prototype_layers(self) -> tuple[nn.Module, nn.Module]:
        return self.last_layer, self.local_layer


class ReconstructionHead(nn.Module):
    """The light decoder of the masked bins (ASiT's ``RECHead``), applied per patch token.

    MLP ``in_dim -> hidden -> hidden -> bottleneck`` with GELU after every layer, then a linear
    map to the ``pt * pf`` bins of the token's own patch (the paper's transposed convolution
    with kernel = stride = patch size is exactly this per-token map).
    """

    def __init__(
        self,
        in_dim: int,
        patch_size: tuple[int, int],
        hidden_dim: int = 768,
        bottleneck_dim: int = 128,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dims = [in_dim, hidden_dim, hidden_dim, bottleneck_dim]
        self.mlp = gelu_mlp(dims, act_last=True, device=device, dtype=dtype)
        self.to_bins = nn.Linear(
            bottleneck_dim, patch_size[0] * patch_size[1], device=device, dtype=dtype
        )

    def forward(self, patch_tokens: Tensor) -> Tensor:
        """patch_tokens: [R, N, D] -> patches [R, N, pt * pf] (time-major within a patch)."""
        return self.to_bins(self.mlp(patch_tokens))


class StudentBranch(nn.Module):
    """Encoder + distillation head: the part of the student the EMA teacher copies."""

    def __init__(self, encoder: SpectrogramEncoder, head: LocalGlobalHead):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, crops: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """crops: [R, T, F] -> (tokens [R, 1 + N, D], global [R, K_g], local [R, N, K_l])."""
        tokens = self.encoder.forward_features(crops)
        cls_logits, patch_logits = self.head(tokens)
        return tokens, cls_logits, patch_logits


__all__ = ["LocalGlobalHead", "ReconstructionHead", "StudentBranch"]
