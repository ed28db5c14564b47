"""How far apart two runs ended, measured against how far training moved the weights.

Used to check world-size invariance (``2 ranks x 8`` against ``1 x 16``) and resumes: for every
floating-point tensor of the recipe's state (student, teacher, heads, centres, memories), the
norm of the difference between the two runs, divided by the norm of the training update of the
first run (its final tensor minus the initial one, from a ``--steps 0`` run of the same seed).
Float32 reduction order alone gives ratios around 1e-6; a different global batch gives ratios
near 1.
"""

from __future__ import annotations

import os

import torch

from fastspec.train.checkpoint import latest_checkpoint, load_checkpoint


def final_state(run_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The recipe state (``model``) of the newest checkpoint of ``run_dir``."""
    found = latest_checkpoint(run_dir)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    return load_checkpoint(found[1])["model"]


def update_ratios(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], init: dict[str, torch.Tensor]
) -> dict[str, float]:
    """``||a - b|| / ||a - init||`` per floating-point tensor that training moved.

    Tensors the update left unchanged (frozen, or fixed buffers) count only if the two runs
    differ there (ratio inf); integer tensors (counters, pointers) must be equal (ratio 0 or
    inf).
    """
    if a.keys() != b.keys() or a.keys() != init.keys():
        raise ValueError(f"the states hold different tensors: {sorted(set(a) ^ set(b))[:5]}")
    ratios = {}
    for key, value in a.items():
        other = b[key]
        if not value.is_floating_point():
            ratios[key] = 0.0 if torch.equal(value, other) else float("inf")
            continue
        diff = (value.double() - other.double()).norm().item()
        update = (value.double() - init[key].double()).norm().item()
        if update == 0.0:
            if diff > 0.0:
                ratios[key] = float("inf")
            continue
        ratios[key] = diff / update
    return ratios


def worst_ratio(ratios: dict[str, float]) -> tuple[str, float]:
    """The tensor with the largest ratio and its ratio."""
    key = max(ratios, key=ratios.get)
    return key, ratios[key]


NOISE_LIMIT = 1e-3  # a tensor whose update differs more than this between two float orders


def compare_runs(reference, other, init, floor, tolerance: float = 1e-2) -> dict:
    """Compare ``other`` with ``reference`` (run directories or states), given the initial
    state ``init`` and ``floor``: the reference run again with only the float reduction order
    changed (e.g. another thread count).

    Some tensors have a gradient that is zero in exact arithmetic (a bias right before a batch
    norm, a LayerNorm bias whose output only feeds one; the key part of a qkv bias): AdamW turns
    their rounding-noise gradients into full-size updates, so even ``floor`` differs from the
    reference there by about its whole update. Those (floor ratio above :data:`NOISE_LIMIT`) must
    stay within 5x their floor (one sample of noise against another); every other tensor within
    ``tolerance`` of its update.
    """
    states = [final_state(x) if not isinstance(x, dict) else x
              for x in (reference, other, init, floor)]  # fmt: skip
    ratios = update_ratios(states[0], states[1], states[2])
    noise = update_ratios(states[0], states[3], states[2])
    driven = {k: v for k, v in ratios.items() if noise.get(k, 0.0) < NOISE_LIMIT}
    noisy = {k: (v, noise[k]) for k, v in ratios.items() if noise.get(k, 0.0) >= NOISE_LIMIT}
    key, ratio = worst_ratio(driven)
    all_key, all_ratio = worst_ratio(ratios)
    return {
        "worst_tensor": key,
        "ratio": ratio,
        "worst_tensor_overall": all_key,
        "ratio_overall": all_ratio,
        "noise_dominated": {k: {"ratio": v, "floor": f} for k, (v, f) in noisy.items()},
        "ok": ratio <= tolerance and all(v <= max(tolerance, 5 * f) for v, f in noisy.values()),
    }


__all__ = ["NOISE_LIMIT", "compare_runs", "final_state", "update_ratios", "worst_ratio"]
