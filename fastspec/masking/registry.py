"""Mask kinds by name: :func:`sample_mask` validates the common arguments once, sets up the
random source on the batch's device (:class:`~fastspec.masking.rng.MaskRng`: Triton Philox on
CUDA, a torch generator elsewhere), and hands over to the kind's sampler."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from fastspec.masking.mask import Mask
from fastspec.masking.rng import MaskRng

# name -> sampler(batch_size, grid, ratio, *, rng, **kind_options) -> Mask
_MASK_KINDS: dict[str, Callable[..., Mask]] = {}
_COMMON = {"batch_size", "grid", "ratio", "rng"}


def register_mask_kind(name: str) -> Callable[[Callable[..., Mask]], Callable[..., Mask]]:
    """Decorator: register ``fn(batch_size, grid, ratio, *, rng, **opts) -> Mask``.

    The sampler receives validated arguments: ``batch_size`` the number of rows to draw
    (clips x masks per clip), ``grid`` a tuple of two positive ints, ``0 <= ratio < 1`` and
    ``rng`` a :class:`~fastspec.masking.rng.MaskRng` on the target device (``rng.device``). It
    must draw all randomness from ``rng``, keep shapes a function of its arguments only, and
    never sync the host.
    """

    def decorator(fn: Callable[..., Mask]) -> Callable[..., Mask]:
        if name in _MASK_KINDS:
            raise ValueError(f"mask kind {name!r} is already registered")
        _MASK_KINDS[name] = fn
        return fn

    return decorator


def list_mask_kinds() -> list[str]:
    """Names accepted by :func:`sample_mask`, sorted."""
    return sorted(_MASK_KINDS)


def sample_mask(
    kind: str,
    batch_size: int,
    grid: tuple[int, int],
    ratio: float,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    num_masks: int = 1,
    **kind_options,
) -> Mask:
    """Draw a :class:`Mask` of the given kind for ``batch_size`` clips on a patch grid.

    Args:
        kind: one of :func:`list_mask_kinds`: ``random`` (MaskSpec / Audio-MAE), ``group``
            (ASiT's GMML rectangles), ``inverse_block`` (EAT), ``time_span`` (ATST-Frame),
            ``time_freq`` (SpecAugment-style stripes). Each kind's docstring gives its options
            and how it turns ``ratio`` into K.
        batch_size: B, the number of clips.
        grid: (T_patches, F_patches); N = T_patches * F_patches tokens, time-major.
        ratio: fraction of tokens to mask, ``0 <= ratio < 1``.
        seed: the same seed gives the same mask on the same kind of device and backend (CPU
            torch generator and CUDA Philox produce different bits).
        generator: a ``torch.Generator`` on ``device`` to draw from instead (mutually exclusive
            with ``seed``); on CUDA one int64 drawn from it keys the Philox kernels.
        device: where the mask is built, normally the batch's device; defaults to the
            generator's device, else CPU.
        num_masks: M masks per clip from one call (EAT uses 16): the result has
            ``B * M`` rows, row ``b * M + j`` being mask ``j`` of clip ``b``, independent draws.
        **kind_options: options of the chosen kind.

    Returns:
        A :class:`Mask` whose tensors are on ``device``, with ``B * num_masks`` rows.
    """
    if kind not in _MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; known kinds: {', '.join(list_mask_kinds())}")
    sampler = _MASK_KINDS[kind]
    _check_options(kind, sampler, kind_options)
    grid = _check_grid(grid)
    _check_ratio(ratio)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(num_masks, bool) or not isinstance(num_masks, int) or num_masks < 1:
        raise ValueError(f"num_masks must be a positive int, got {num_masks!r}")

    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator to sample_mask, not both")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but the mask is requested on {device}"
        )
    rng = MaskRng(device, seed=seed, generator=generator)
    # masks of one clip are just more rows: every sampler draws rows independently
    return sampler(batch_size * num_masks, grid, float(ratio), rng=rng, **kind_options)


def _check_grid(grid) -> tuple[int, int]:
    try:
        t, f = (int(g) for g in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (T_patches, F_patches), got {grid!r}") from None
    if t < 1 or f < 1:
        raise ValueError(f"grid must be two positive ints (T_patches, F_patches), got {grid!r}")
    return t, f


def _check_ratio(ratio) -> None:
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, (int, float))
        or not math.isfinite(ratio)
        or not 0.0 <= ratio < 1.0
    ):
        raise ValueError(f"ratio (the masked fraction) must be in [0, 1), got {ratio!r}")


def _check_options(kind: str, sampler: Callable[..., Mask], options: dict) -> None:
    params = inspect.signature(sampler).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = sorted(set(params) - _COMMON)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"mask kind {kind!r} got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(allowed) or 'no options'}"
        )
