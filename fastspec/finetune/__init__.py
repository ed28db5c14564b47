"""Fine-tuning protocols of the papers (``fastspec finetune ENCODER DATA --protocol P``).

- :mod:`~fastspec.finetune.protocols`: the recipes (``audioset``, ``esc50``,
  ``speechcommands``, ``folder``), each setting with its source (torch-free: the CLI's parser
  reads the names);
- :mod:`~fastspec.finetune.tasks`: each protocol's clips and splits;
- :mod:`~fastspec.finetune.augment`: balanced sampling, mixup, SpecAugment, patch-out,
  layer-wise lr decay;
- :mod:`~fastspec.finetune.trainer`: a protocol as a recipe of the one fine-tuning loop
  (:func:`fastspec.evaluate.finetune.fine_tune`), on any encoder through the encoder contract;
- :mod:`~fastspec.finetune.run`: a protocol end to end and the export with the head.

Depends on :mod:`fastspec.encoder`, :mod:`fastspec.models`, :mod:`fastspec.data` and
:mod:`fastspec.evaluate`; the CLI sits on top.
"""

import importlib

__all__ = [
    "PROTOCOLS",
    "ProtocolSettings",
    "finetune",
    "fresh_encoder",
    "open_protocol_task",
    "protocol_settings",
]

# where each public name lives; imported on first use, so that importing the torch-free
# protocol table (as the CLI does for its parser) does not import torch
_HOMES = {
    "PROTOCOLS": "protocols",
    "ProtocolSettings": "protocols",
    "protocol_settings": "protocols",
    "open_protocol_task": "tasks",
    "finetune": "run",
    "fresh_encoder": "run",
}


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module 'fastspec.finetune' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fastspec.finetune.{_HOMES[name]}"), name)
