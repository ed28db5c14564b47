"""``train.compile``: what fastspec.train.compile compiles, without graph breaks or recompiles.

Compiling on CPU is slow (tens of seconds for the first step), so one tiny recipe runs three
training steps with the ``aot_eager`` backend: Dynamo's counters must show no graph break at all
and no graph compiled after the first step. The policy and the measurements behind it are in
fastspec/train/compile.py.
"""

from __future__ import annotations

import torch

from fastspec.models import create_model
from fastspec.recipes import build_recipe
from fastspec.train.compile import compile_recipe


def test_compile_covers_blocks_and_loss_without_breaks_or_recompiles():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    encoder = create_model("vit_mini_patch16", n_mels=32, embed_dim=32, depth=2, num_heads=2)
    recipe = build_recipe(
        "maskspec", encoder, decoder_dim=16, decoder_depth=1, decoder_heads=2, mask_ratio=0.75
    )
    # aot_eager: Dynamo and AOTAutograd as in a real run (graph breaks and recompiles are decided
    # there), without Inductor's C++ code generation, which takes minutes on a busy 2-core CPU
    compiled = compile_recipe(recipe, backend="aot_eager")
    # what the docstring promises: every block (encoder and decoder) and the loss stage
    assert compiled == ["encoder.blocks.0", "encoder.blocks.1", "decoder.blocks.0", "forward_loss"]
    # in place: parameter names (and so checkpoints) are those of the eager recipe
    assert not any("_orig_mod" in name for name in recipe.state_dict())

    optimizer = torch.optim.SGD(recipe.parameters(), lr=1e-2)
    generator = torch.Generator()
    mel = torch.randn(4, 64, 32)
    graphs = []
    for step in range(3):
        generator.manual_seed(step)  # new masks each step: same shapes, other values
        loss = recipe(mel, generator=generator)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        graphs.append(counters["stats"]["unique_graphs"])
    assert dict(counters["graph_break"]) == {}
    # one graph per distinct block (both encoder blocks share one) and one for the loss
    assert graphs[0] == 3, graphs
    assert graphs[1] == graphs[2] == graphs[0], f"recompiled after step 1: {graphs}"
    assert torch.isfinite(loss)
