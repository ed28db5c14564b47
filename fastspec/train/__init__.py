"""Training: config tree, trainer (1 to N ranks under torchrun), checkpoints, metrics.

``pretrain(cfg)`` runs a recipe end to end; ``default_config`` / ``apply_override`` build the
typed config the CLI fills in.
"""

from fastspec.train.config import Config, ConfigError, apply_override, default_config
from fastspec.train.distributed import RankFailure
from fastspec.train.loop import NonFiniteLossError, RunResult, pretrain

__all__ = [
    "Config",
    "ConfigError",
    "NonFiniteLossError",
    "RankFailure",
    "RunResult",
    "apply_override",
    "default_config",
    "pretrain",
]
