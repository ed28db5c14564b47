"""Build a run: data, front end, model, recipe, optimizer, parallel wrapper, resume state.

Everything here happens once, before the first step, and in the same order on every rank (the
ranks agree on everything without talking: same config, same seed, same files).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fastspec._logging import get_logger
from fastspec.backends import choose_precision
from fastspec.data import ClipDataset, open_source, resolve_loader
from fastspec.frontend import LogMel, get_preset, read_stats_file
from fastspec.frontend.mel_range import check_mel_range_jitter
from fastspec.models import create_model
from fastspec.recipes import build_recipe, encoder_options, recipe_spec
from fastspec.train.checkpoint import latest_checkpoint, load_checkpoint, restore_state
from fastspec.train.compile import compile_recipe
from fastspec.train.config import Config, ConfigError, resolve_counts
from fastspec.train.distributed import (
    DistState,
    barrier,
    init_distributed,
    restarted_by_torchrun,
    wrap_model,
)
from fastspec.train.schedule import param_groups

log = get_logger("fastspec.train")


@dataclass
class Run:
    """What the trainer works with."""

    cfg: Config
    dist: DistState
    amp: str  # the precision actually used (fastspec.backends)
    run_dir: Path
    source: object  # the opened data source (skipped files are counted on it)
    dataset: ClipDataset
    loader_kind: str  # dali | torch
    frontend: LogMel
    recipe: nn.Module  # the recipe itself (hooks, FLOPs, export)
    model: nn.Module  # what the step calls: the recipe, DDP around it, or FSDP2-sharded
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    start_step: int
    clips_seen: int  # data position: clips of the global batches consumed so far


def open_data(cfg: Config) -> tuple[object, ClipDataset, str]:
    """The data source, the clip dataset and the loader kind; a source without one usable file
    stops the run here, before anything is built or written."""
    demo = {
        "num_clips": cfg.data.demo_clips,
        "sample_rate": cfg.data.sample_rate,
        "clip_seconds": cfg.data.demo_clip_seconds,
        "seed": cfg.train.seed,
    }
    source = open_source(cfg.data.source, demo_options=demo if cfg.data.source is None else None)
    dataset = ClipDataset(source, cfg.data.sample_rate, cfg.data.clip_seconds, seed=cfg.train.seed)
    # decided (and a bad choice refused) before the run directory exists
    return source, dataset, resolve_loader(cfg.data.loader, source)


def prepare_run_dir(cfg: Config, resume: bool) -> tuple[Path, bool]:
    """Create (or check, when resuming) the run directory; never overwrite a previous run.

    Returns the directory and whether to resume: a worker that torchrun restarted after a
    failure (``--max-restarts``) resumes from the run's last checkpoint by itself.
    """
    run_dir = (
        Path(cfg.out)
        if cfg.out
        else Path("runs") / f"{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    found = latest_checkpoint(run_dir)
    if not resume and found is not None and restarted_by_torchrun():
        log.warning(f"restarted by torchrun: resuming {run_dir} from its last checkpoint")
        resume = True
    if resume and found is None:
        raise ConfigError(f"--resume: no checkpoint to resume from in {run_dir}")
    if not resume and found is not None:
        raise ConfigError(
            f"{run_dir} already holds checkpoints of a run; pass --resume to continue it "
            "or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.out = str(run_dir)
    return run_dir, resume


def recipe_options(cfg: Config) -> dict:
    """The recipe's constructor arguments, as its ``RecipeSpec.options`` reads the config."""
    return recipe_spec(cfg.recipe).options(cfg)


def make_recipe(cfg: Config, device: torch.device) -> nn.Module:
    """Encoder + recipe as the config says, on ``device`` (weights from the current seed)."""
    patch = {"patch_size": cfg.model.patch_size} if cfg.model.patch_size is not None else {}
    options = recipe_options(cfg)
    # the recipe's token layout (ATST: full-frequency 40 ms tokens), asked through the contract
    asked = encoder_options(cfg.recipe, **options)
    try:
        encoder = create_model(
            cfg.model.name,
            n_mels=cfg.frontend.n_mels,
            pos_embed=cfg.model.pos_embed,
            max_frames=cfg.model.max_frames,
            qkv_bias=cfg.model.qkv_bias,
            drop_path_rate=cfg.model.drop_path,
            **patch,
            **asked,
        )
    except (TypeError, ValueError) as e:  # an override this encoder does not take, a bad value
        raise ConfigError(f"model {cfg.model.name!r}: {e}") from None
    return build_recipe(cfg.recipe, encoder, **options).to(device)


def check_mel_range_jitter_setting(cfg: Config) -> None:
    """``frontend.mel_range_jitter`` against the preset and the recipe: a ConfigError before
    anything is built."""
    jitter = cfg.frontend.mel_range_jitter
    if not any(jitter):
        return
    if hasattr(recipe_spec(cfg.recipe).cls, "waveform_views"):
        raise ConfigError(
            f"frontend.mel_range_jitter: recipe {cfg.recipe} featurises views it cuts from the "
            "waveform; the mel-range augmentation is for recipes that featurise whole clips"
        )
    preset = get_preset(
        cfg.frontend.preset, sample_rate=cfg.data.sample_rate, n_mels=cfg.frontend.n_mels
    )
    try:
        check_mel_range_jitter(preset, jitter)
    except ValueError as e:
        raise ConfigError(f"{e} (frontend.preset={cfg.frontend.preset})") from None


def build_run(cfg: Config, resume: bool) -> Run:
    """Everything a run needs, resumed from its last checkpoint when asked (or restarted)."""
    state = init_distributed(cfg.train.device, cfg.train.parallel, cfg.train.dist_timeout)
    device = state.device
    if cfg.train.amp == "fp16" and device.type == "cpu":
        raise ConfigError("train.amp=fp16 needs CUDA (loss scaling); use bf16 or none on CPU")
    # decided once (fastspec.backends): bf16 trains in float32 on a CPU without native bf16
    amp = choose_precision(cfg.train.amp, device.type)
    check_mel_range_jitter_setting(cfg)
    source, dataset, loader_kind = open_data(cfg)
    resolve_counts(cfg, len(dataset))  # global batch and epochs -> this world's step counts
    run_dir, resume = prepare_run_dir(cfg, resume)
    barrier(state)  # no rank writes into the run directory before every rank has checked it

    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    frontend = LogMel(
        cfg.frontend.preset,
        backend=cfg.frontend.backend,
        n_mels=cfg.frontend.n_mels,
        sample_rate=cfg.data.sample_rate,
        # the loader already rejects non-finite audio; the check would sync host and device
        check_finite=False,
        **(read_stats_file(cfg.frontend.stats, cfg.frontend.n_mels) if cfg.frontend.stats else {}),
    ).to(device)
    recipe = make_recipe(cfg, device)
    if cfg.train.compile:
        compile_recipe(recipe)  # in place (fastspec.train.compile): blocks and loss
    model = wrap_model(recipe, state, amp)
    optimizer = torch.optim.AdamW(
        param_groups(recipe, cfg.optim.weight_decay),
        lr=cfg.abs_lr,
        betas=cfg.optim.betas,
        # one kernel for all parameters on GPU; FSDP2's sharded parameters take foreach
        fused=device.type == "cuda" and state.parallel != "fsdp",
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    start_step, clips_seen = 0, 0
    if resume:
        _, path = latest_checkpoint(run_dir)
        saved = load_checkpoint(path, map_location="cpu")
        restore_state(model, optimizer, saved["model"], saved["optimizer"], source=str(path))
        scaler.load_state_dict(saved["scaler"])
        start_step = int(saved["step"])
        clips_seen = int(saved.get("clips_seen", start_step * cfg.effective_batch))
        log.info(
            f"resuming {run_dir} from step {start_step} ({path.name}, saved by "
            f"{saved.get('world_size', 1)} rank(s), resumed by {state.world})"
        )
    return Run(cfg, state, amp, run_dir, source, dataset, loader_kind, frontend, recipe, model,
               optimizer, scaler, start_step, clips_seen)  # fmt: skip


__all__ = ["Run", "build_run", "make_recipe", "open_data", "prepare_run_dir", "recipe_options"]
