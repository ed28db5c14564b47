"""The random source of one :func:`~fastspec.masking.sample_mask` call, on the mask's device.

Two implementations behind one interface, picked by :func:`~fastspec.masking.masking_backend`:

- ``triton`` (CUDA): Philox in Triton (``fastspec.kernels.masking``). The key is a one-element
  int64 *device* tensor: ``torch.full`` of the given seed (a fill kernel, no copy from the host),
  or one ``torch.randint`` draw from the given CUDA generator (advancing it, so a seeded
  generator reproduces the whole sequence). Each draw of the call takes its own Philox stream.
- ``torch`` (CPU, meta, fallback): ``torch.rand`` with a ``torch.Generator``.
- ``keyed`` (any device, when the generator is a :class:`~fastspec.masking.clip_rng.ClipRng`):
  per-clip counter-based draws, identical however the batch is split over ranks.

The two produce different bits for the same seed; each is deterministic on its own device kind.
Neither reads anything back to the host.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastspec._logging import notice_once
from fastspec.kernels.masking_reference import select_top_ref
from fastspec.masking.backend import masking_backend
from fastspec.masking.clip_rng import ClipRng

__all__ = ["MaskRng"]


class MaskRng:
    """Uniform / normal draws and exact top-K selection for the samplers of one call.

    Args:
        device: where every tensor is made.
        seed: an int; the same seed gives the same draws (per backend and device kind).
        generator: a ``torch.Generator`` on ``device`` instead (advanced by the draws), or a
            :class:`~fastspec.masking.clip_rng.ClipRng` (per-row keyed draws).
        backend: ``"triton"`` | ``"torch"``; None asks :func:`masking_backend`.
    """

    def __init__(
        self,
        device: torch.device,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        backend: str | None = None,
    ):
        self.device = torch.device(device)
        self._stream = 0
        self.generator: torch.Generator | ClipRng | None = None
        self.seed: Tensor | None = None
        if isinstance(generator, ClipRng):
            # per-clip keyed draws (the training loop's): the same on any batch layout
            self.backend, self.generator = "keyed", generator
            if self.device.type == "cuda":
                notice_once(
                    "masking.keyed",
                    "masking: the trainer's per-clip keyed draws (world-size invariant) run as "
                    "torch ops on CUDA, not through the Triton Philox kernels",
                )
            return
        self.backend = backend or masking_backend(self.device)
        if self.backend == "triton":
            if seed is not None:
                # a fill kernel: the seed travels as a launch argument, not a host copy
                self.seed = torch.full((1,), int(seed) % 2**63, dtype=torch.int64, device=device)
            else:
                # one draw from the caller's (or the default) generator keys the whole call
                self.seed = torch.randint(
                    0, 2**62, (1,), generator=generator, device=device, dtype=torch.int64
                )
        else:
            if seed is not None:
                # seeding a generator is host-side bookkeeping; no kernel, no sync
                generator = torch.Generator(device=self.device).manual_seed(int(seed))
            self.generator = generator

    def _next_stream(self) -> int:
        stream = self._stream
        self._stream += 1
        return stream

    def uniform(self, *shape: int) -> Tensor:
        """float32 draws in [0, 1) of ``shape``."""
        if self.backend == "triton":
            from fastspec.kernels.masking import philox_uniform

            return philox_uniform(self.seed, tuple(shape), self._next_stream())
        if self.backend == "keyed":
            return self.generator.uniform(*shape)
        return torch.rand(shape, generator=self.generator, device=self.device)

    def normal(self, *shape: int) -> Tensor:
        """float32 standard normal draws of ``shape``."""
        if self.backend == "triton":
            # Box-Muller on two Philox streams; 1 - u lies in (0, 1], so the log is finite
            u1 = self.uniform(*shape)
            u2 = self.uniform(*shape)
            return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos((2.0 * math.pi) * u2)
        if self.backend == "keyed":
            return self.generator.normal(*shape)
        return torch.randn(shape, generator=self.generator, device=self.device)

    def randint(self, high: Tensor | int, shape: tuple[int, ...]) -> Tensor:
        """int64 draws uniform in ``[0, high)``; ``high`` (>= 1) may be a tensor broadcast to
        ``shape``. Built from float32 uniforms: fine for ranges far below 2**24."""
        u = self.uniform(*shape)
        if isinstance(high, Tensor):
            return torch.minimum((u * high.to(torch.float32)).long(), high.long() - 1)
        return (u * high).long().clamp_max(high - 1)

    def select_top(
        self,
        n_rows: int,
        n_tokens: int,
        n_keep: int,
        priority: Tensor | None = None,
        priority_bits: int = 0,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Keep exactly ``n_keep`` tokens per row: highest ``priority`` first, uniformly at random
        among equal priorities. Returns ``(mask, ids_keep, ids_restore)`` as in :class:`Mask`.

        ``priority``: [B, N] integers in ``[0, 2**priority_bits)``, or None.
        """
        if self.backend == "triton":
            from fastspec.kernels.masking import select_top

            return select_top(
                self.seed, n_rows, n_tokens, n_keep, self._next_stream(), priority, priority_bits
            )
        noise = self.uniform(n_rows, n_tokens)
        return select_top_ref(noise, n_keep, priority)
