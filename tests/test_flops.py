"""The analytic FLOP count behind MFU matches torch's own count of a real training step."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fastspec.models import create_model
from fastspec.models.flops import transformer_train_flops
from fastspec.recipes.maskspec import MaskSpec


@pytest.mark.parametrize("n_frames, ratio", [(100, 0.75), (64, 0.5), (37, 0.8)])
def test_maskspec_flops_match_the_flop_counter(n_frames, ratio):
    torch.manual_seed(0)
    encoder = create_model("vit_mini_patch16", n_mels=64)
    recipe = MaskSpec(encoder, decoder_dim=64, decoder_depth=2, decoder_heads=4, mask_ratio=ratio)
    mel = torch.randn(1, n_frames, 64)
    # the math backend decomposes attention into bmm, which the counter sees on CPU
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        recipe(mel, generator=torch.Generator().manual_seed(0))["loss"].backward()
    assert recipe.train_flops_per_clip(n_frames) == pytest.approx(
        counter.get_total_flops(), rel=1e-9
    )


def test_transformer_flops_formula():
    # one block, 10 tokens of width 8, MLP ratio 4: 2*10*(4*64 + 8*64) + 4*100*8, times 3
    assert transformer_train_flops(10, 8, 1, 4.0) == 3 * (2 * 10 * (4 * 64 + 8 * 64) + 4 * 100 * 8)
