"""Multiply-accumulates and parameters of a registered model, counted by torch itself.

``torch.utils.flop_counter.FlopCounterMode`` records the FLOPs of every matmul, convolution and
attention kernel a forward pass dispatches; MACs are half of them (one multiply and one add per
MAC), the unit papers compare models in (MAST's "5x fewer MACs than AST"). Norms, softmax,
pooling sums and other elementwise work are not counted, the usual convention (fvcore, ptflops).

The pass runs on the meta device: only shapes flow, so even ViT-L on 1024 frames is counted in
a fraction of a second and without memory. Attention is forced onto SDPA's math backend, which
decomposes it into the two batched matmuls the counter sees (a fused CPU kernel would be missed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fastspec.models.registry import create_model


@dataclass(frozen=True)
class MacReport:
    """MACs of one forward pass of one clip, and parameter counts.

    Attributes:
        model: registry name.
        n_frames, n_mels: the input clip, frames x mel bins.
        padded_frames: frames the model ran on: ``n_frames`` zero-padded to whole patches (or
            whole mask units of a MAST), as the recipes and the exported encoder pad.
        macs: multiply-accumulates of the forward pass (FLOPs / 2).
        params: parameters of the model.
        macs_by_module: MACs per direct child module (``patch_embed``, ``blocks``, ...).
        macs_by_stage: MACs of each stage's blocks, for encoders of more than one stage (MAST).
    """

    model: str
    n_frames: int
    n_mels: int
    padded_frames: int
    macs: int
    params: int
    macs_by_module: dict[str, int] = field(default_factory=dict)
    macs_by_stage: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "input": f"{self.n_frames}x{self.n_mels}",
            "n_frames": self.n_frames,
            "n_mels": self.n_mels,
            "padded_frames": self.padded_frames,
            "macs": self.macs,
            "gmacs": round(self.macs / 1e9, 3),
            "params": self.params,
            "params_m": round(self.params / 1e6, 3),
            "macs_by_module": self.macs_by_module,
            "macs_by_stage": self.macs_by_stage,
        }


def parse_input(text: str) -> tuple[int, int]:
    """``"1024x128"`` -> (1024, 128): frames x mel bins; raises ValueError naming the text."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        n_frames, n_mels = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"input must be FRAMESxMELS, e.g. 1024x128; got {text!r}") from None
    if n_frames < 1 or n_mels < 1:
        raise ValueError(f"input must be two positive ints FRAMESxMELS, got {text!r}")
    return n_frames, n_mels


def count_macs(name: str, n_frames: int = 1024, n_mels: int = 128, **overrides) -> MacReport:
    """Count MACs (FLOPs / 2) of the forward pass (``forward_features``) and the parameters of a registered model.

    Args:
        name: a name of :func:`fastspec.models.list_models`.
        n_frames: frames of the input clip; padded up to a multiple of ``patch_size[0]``.
        n_mels: mel bins; passed to the factory as ``n_mels``.
        **overrides: more factory overrides (e.g. ``q_strides`` of a MAST).

    Returns:
        A :class:`MacReport` for one clip.
    """
    model = create_model(name, device="meta", n_mels=n_mels, **overrides)
    params = sum(p.numel() for p in model.parameters())
    multiple = model.patch_size[0]
    padded = -(-n_frames // multiple) * multiple
    mel = torch.empty(1, padded, n_mels, device="meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        # through __call__ (forward == forward_features for the encoders): the counter attributes
        # FLOPs to modules by their call hooks, which a direct method call would skip
        model(mel)
    # counts are keyed by the path of each module that ran, under the root's class name
    # ("MASTEncoder.patch_embed", "MASTEncoder.blocks.3"); a ModuleList never runs itself, so
    # its entries are summed under its name
    root = type(model).__name__
    by_module: dict[str, int] = {}
    by_block: dict[int, int] = {}
    for path, counts in counter.get_flop_counts().items():
        parts = path.split(".")
        direct = len(parts) == 2 or (len(parts) == 3 and parts[2].isdigit())
        if parts[0] != root or not direct:
            continue
        macs = sum(counts.values()) // 2
        by_module[parts[1]] = by_module.get(parts[1], 0) + macs
        if parts[1] == "blocks" and len(parts) == 3:
            by_block[int(parts[2])] = macs
    by_stage = []
    if len(model.stage_ends) > 1:  # multiscale encoders: the MACs of each stage
        start = 0
        for end in model.stage_ends:
            by_stage.append(sum(by_block.get(i, 0) for i in range(start, end + 1)))
            start = end + 1
    return MacReport(
        name, n_frames, n_mels, padded, counter.get_total_flops() // 2, params, by_module, by_stage
    )
