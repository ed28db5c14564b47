"""Polyphase resampling for the data pipeline: a re-export of :mod:`fastspec.frontend.polyphase`.

The implementation moved to the front end, which fuses it with the log-mel
(``fastspec.frontend.logmel(..., orig_sample_rate=...)``); the public names and their behaviour
are unchanged (``scipy.signal.resample_poly``'s filter, Kaiser beta 5, 10 zero crossings).
"""

from fastspec.frontend.polyphase import (
    HALF_WIDTH,
    KAISER_BETA,
    resample,
    resample_window,
    resampled_length,
)

__all__ = ["HALF_WIDTH", "KAISER_BETA", "resample", "resample_window", "resampled_length"]
