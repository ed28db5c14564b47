"""Fine-tuning protocols of the papers (``fastspec finetune ENCODER DATA --protocol P``).

- :mod:`~fastspec.finetune.protocols`: the recipes (``audioset``, ``esc50``,
  ``speechcommands``, ``folder``), each setting with its source, and their splits;
- :mod:`~fastspec.finetune.augment`: balanced sampling, mixup, SpecAugment, patch-out,
  layer-wise lr decay, the schedule;
- :mod:`~fastspec.finetune.trainer`: one split, on any encoder through the encoder contract;
- :mod:`~fastspec.finetune.run`: a protocol end to end and the export with the head.

Depends on :mod:`fastspec.encoder`, :mod:`fastspec.models`, :mod:`fastspec.data` and
:mod:`fastspec.evaluate`; the CLI sits on top.
"""

from fastspec.finetune.protocols import (
    PROTOCOLS,
    ProtocolSettings,
    open_protocol_task,
    protocol_settings,
)
from fastspec.finetune.run import finetune, fresh_encoder

__all__ = [
    "PROTOCOLS",
    "ProtocolSettings",
    "finetune",
    "fresh_encoder",
    "open_protocol_task",
    "protocol_settings",
]
