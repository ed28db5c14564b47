"""Triton kernels of fastspec, installed as ``fastspec.kernels`` (one op per file).

Nothing is imported eagerly: ``fastspec.kernels.reference`` (pure torch) must stay importable
where Triton is missing, and each kernel module decides at import time whether it runs under the
Triton interpreter. Kernels import nothing from ``fastspec`` except ``fastspec._logging``.

- ``reference``: float32/float64 torch references and shared constants (windows, mel banks).
- ``logmel``: fused log-mel front end (``logmel_fwd``).
"""
