"""Random numbers keyed per clip: the same draws for a clip whatever batch or rank it is in.

A training step's crops, masks and augmentations must not depend on how the global batch is cut
into ranks and micro-batches (1 x 16 clips, 2 ranks x 8, 2 accumulation steps of 8). A
``torch.Generator`` cannot give that: its draws depend on the batch shape and on how many draws
came before. :class:`ClipRng` is a counter-based generator instead: every value is a hash of
(the row's key, the call's stream number, the element's index within the row), computed with
batched integer ops on the device (no host sync, no per-clip loop). The training loop keys row
``i`` with ``(seed, step, global position of the clip in the step's batch)``, so each rank draws
exactly its slice of what one process would draw for the whole batch.

Every sampler that accepts a ``generator`` also accepts a :class:`ClipRng` (through
:func:`uniform_rows` here and :class:`~fastspec.masking.rng.MaskRng`): draws whose shape puts
the batch rows first (or at ``row_dim``) come from the rows' keys. Rows that stand for several
views of a clip take derived keys (:meth:`ClipRng.views`).

The hash is Chris Wellons' ``lowbias32`` on 32-bit words (held in int64 so no product
overflows), chained over the three inputs; 24 bits make each float32 uniform in [0, 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x5BD1E995  # odd multipliers below 2**31: products stay under 2**63


def hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mix of ``x`` (int64 holding values in [0, 2**32)), elementwise."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * _M1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _M2) & _MASK32
    return x ^ (x >> 16)


def clip_keys(seed: int, step: int, first: int, count: int, device) -> Tensor:
    """Keys [count] int64 of the clips at global positions ``first .. first + count - 1`` of
    optimizer step ``step``'s batch (positions count over ranks and micro-steps)."""
    base = hash32(torch.tensor([seed & _MASK32, (seed >> 32) & _MASK32, step & _MASK32]))
    head = int(hash32(hash32(base[0] ^ base[1]) ^ base[2]))  # host ints: no device tensor
    positions = torch.arange(first, first + count, dtype=torch.int64, device=device)
    return hash32(positions ^ head)


class ClipRng:
    """Per-row counter-based random source (module docstring).

    Args:
        keys: [R] int64 in [0, 2**32): one key per row of the draws.
    """

    def __init__(self, keys: Tensor):
        if keys.dim() != 1 or keys.dtype != torch.int64:
            raise ValueError(f"keys must be [R] int64, got {tuple(keys.shape)} {keys.dtype}")
        self.keys = keys
        self.device = keys.device
        self._stream = 0

    @classmethod
    def for_clips(cls, seed: int, step: int, first: int, count: int, device) -> ClipRng:
        """The source of ``count`` clips starting at global position ``first`` of ``step``."""
        return cls(clip_keys(seed, step, first, count, device))

    @property
    def rows(self) -> int:
        return self.keys.shape[0]

    def _next_stream(self) -> int:
        stream = self._stream
        self._stream += 1
        return stream

    def views(self, n_views: int) -> ClipRng:
        """A source of ``n_views * R`` rows, view-major (row ``v * R + r`` is view ``v`` of
        row ``r``), with keys derived from this one's (it consumes one stream here)."""
        tag = hash32(torch.tensor(self._next_stream() * 0x9E3779B1))
        v = torch.arange(n_views, dtype=torch.int64, device=self.device)[:, None]
        derived = hash32(hash32(self.keys[None, :] ^ int(tag)) ^ hash32(v + 0x632BE5AB))
        return ClipRng(derived.reshape(-1))

    def chunk(self, n: int) -> list[ClipRng]:
        """``n`` sources over consecutive equal blocks of rows (same keys, own streams)."""
        return [ClipRng(k) for k in self.keys.chunk(n)]

    def _bits(self, rows: int, per_row: int) -> Tensor:
        """[rows, per_row] int64 hashes in [0, 2**32) for the next stream."""
        keys = self.keys
        if rows != keys.shape[0]:
            # more rows than keys, clip-major: row r * M + j is draw j of row r (num_masks)
            if rows % keys.shape[0]:
                raise ValueError(
                    f"ClipRng keyed for {keys.shape[0]} rows cannot draw {rows} rows; the "
                    f"batch rows must come first (or at row_dim)"
                )
            m = rows // keys.shape[0]
            sub = torch.arange(m, dtype=torch.int64, device=self.device)
            keys = hash32(keys[:, None] ^ hash32(sub + 0x2545F491)).reshape(-1)
        stream = int(hash32(torch.tensor(self._next_stream() + 0x68E31DA4)))
        col = torch.arange(per_row, dtype=torch.int64, device=self.device)
        return hash32(hash32(keys[:, None] ^ stream) ^ col[None, :])

    def uniform(self, *shape: int) -> Tensor:
        """float32 draws in [0, 1) of ``shape`` (rows first)."""
        per_row = math.prod(shape[1:])
        bits = self._bits(shape[0], per_row) >> 8  # 24 bits: exact in float32
        return (bits.to(torch.float32) * (1.0 / (1 << 24))).reshape(shape)

    def normal(self, *shape: int) -> Tensor:
        """float32 standard normal draws of ``shape`` (Box-Muller on two streams)."""
        u1, u2 = self.uniform(*shape), self.uniform(*shape)
        return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos((2.0 * math.pi) * u2)


def uniform_rows(
    generator: torch.Generator | ClipRng | None, shape: tuple[int, ...], device, row_dim: int = 0
) -> Tensor:
    """``torch.rand(shape)`` from a ``torch.Generator`` (or the default one), or the per-row
    draws of a :class:`ClipRng` whose rows are dimension ``row_dim`` of ``shape``."""
    if not isinstance(generator, ClipRng):
        return torch.rand(shape, device=device, generator=generator)
    moved = (shape[row_dim], *shape[:row_dim], *shape[row_dim + 1 :])
    return generator.uniform(*moved).movedim(0, row_dim)


def view_rows(generator: torch.Generator | ClipRng | None, n_views: int):
    """The source for ``n_views * B`` view-major rows: :meth:`ClipRng.views`, or the same
    ``torch.Generator`` (whose draws simply continue)."""
    return generator.views(n_views) if isinstance(generator, ClipRng) else generator


def row_chunks(generator: torch.Generator | ClipRng | None, n: int) -> list:
    """``n`` sources for consecutive row blocks: :meth:`ClipRng.chunk`, or the generator n
    times."""
    return generator.chunk(n) if isinstance(generator, ClipRng) else [generator] * n


__all__ = ["ClipRng", "clip_keys", "hash32", "row_chunks", "uniform_rows", "view_rows"]
