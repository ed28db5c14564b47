"""The pretraining loop: data -> front end -> recipe -> AdamW, with checkpoints and metrics.

One step, as in DESIGN.md §3: a batch of waveforms is moved to the device, turned into normalised
log-mel features (no gradient), masked and encoded by the recipe under one autocast context, and
the accumulated gradient updates the weights with AdamW under a warm-up + cosine schedule.

Host-device syncs: the steady-state step has none. The loss is read back only every
``train.log_every`` steps and before each checkpoint (``_read_loss``), except in
``train.nonfinite=skip`` mode, which must decide before each optimizer step.

Reproducibility: weights come from ``train.seed``; the data order, crops and masks depend only on
(seed, step), never on a global RNG state, so a run resumed from a checkpoint reproduces the
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fastspec._logging import get_logger
from fastspec.data import ClipDataset, build_loader, open_source, resolve_loader
from fastspec.encoder import export_encoder
from fastspec.frontend import LogMel
from fastspec.models import create_model
from fastspec.recipes import build_recipe
from fastspec.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fastspec.train.config import Config, ConfigError
from fastspec.train.metrics import MetricsLog, peak_flops, plot_loss

log = get_logger("fastspec.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last checkpoint on disk is from before it."""


@dataclass
class RunResult:
    """What a finished (or stopped) run left behind."""

    run_dir: Path
    step: int
    final_loss: float | None
    encoder_path: Path
    seconds: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available here")
    return torch.device(name)


def lr_at(step: int, cfg: Config) -> float:
    """Learning rate of optimizer step ``step``: linear warm-up, then cosine to ``min_lr``."""
    peak, floor = cfg.abs_lr, cfg.optim.min_lr
    total = max(cfg.train.steps, 1)
    warmup = min(cfg.optim.warmup_steps, total)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def weight_decay_at(step: int, cfg: Config) -> float:
    """Weight decay of step ``step``: constant, or cosine to ``optim.weight_decay_end`` (DINO)."""
    start, end = cfg.optim.weight_decay, cfg.optim.weight_decay_end
    if end is None:
        return start
    progress = min(step / max(cfg.train.steps - 1, 1), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases, norms and learned tokens (anything with < 2 dims).

    Parameters with ``requires_grad=False`` (an EMA teacher) are left out of the optimizer.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "decay": True},
        {"params": no_decay, "weight_decay": 0.0, "decay": False},
    ]


def _mask_seed(seed: int, micro_step: int) -> int:
    # a distinct, reproducible mask stream per micro-step, independent of any global RNG
    return (seed * 1_000_003 + micro_step * 7_919 + 12_345) % (2**63 - 1)


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _compile_blocks(recipe: nn.Module) -> None:
    # per block, as torchtitan does: small graphs compile fast and are reused across depth
    for module in recipe.modules():
        blocks = getattr(module, "blocks", None)
        if isinstance(blocks, nn.ModuleList):
            for block in blocks:
                block.compile()


def recipe_options(cfg: Config) -> dict:
    """The recipe's constructor arguments, taken from the config tree."""
    if cfg.recipe == "maskspec":
        return {
            "decoder_dim": cfg.model.decoder_dim,
            "decoder_depth": cfg.model.decoder_depth,
            "decoder_heads": cfg.model.decoder_heads,
            "mask_kind": cfg.masking.kind,
            "mask_ratio": cfg.masking.ratio,
            "norm_pix_loss": cfg.masking.norm_pix_loss,
        }
    if cfg.recipe in ("atst-clip", "atst-frame"):
        return _atst_options(cfg)
    if cfg.recipe == "asit":
        from fastspec.frontend import get_preset, num_frames

        # the asit section maps one to one onto ASiT's keyword arguments, but for the crop,
        # given in seconds here and in frames of the run's front end there
        features = get_preset(
            cfg.frontend.preset, sample_rate=cfg.data.sample_rate, n_mels=cfg.frontend.n_mels
        )
        options = dataclasses.asdict(cfg.asit)
        seconds = options.pop("crop_seconds")
        return {
            **options,
            "crop_frames": int(num_frames(round(seconds * cfg.data.sample_rate), features)),
            "mask_kind": cfg.masking.kind,
            "mask_ratio": cfg.masking.ratio,
        }
    return {}  # a recipe without a config section takes no options


def _atst_options(cfg: Config) -> dict:
    """ATST-Clip / ATST-Frame options: the ``atst`` section, crops converted to frames."""
    from fastspec.frontend import get_preset, num_frames

    a, frame = cfg.atst, cfg.recipe == "atst-frame"
    seconds = a.crop_seconds if a.crop_seconds is not None else (10.0 if frame else 6.0)
    features = get_preset(
        cfg.frontend.preset, sample_rate=cfg.data.sample_rate, n_mels=cfg.frontend.n_mels
    )
    options = {
        "crop_frames": int(num_frames(round(seconds * cfg.data.sample_rate), features)),
        "proj_hidden": a.proj_hidden,
        "proj_dim": a.proj_dim,
        "ema_base": a.ema_momentum,
        "mixup_ratio": a.mixup_ratio,
        "memory_size": a.memory_size,
        "freq_scale": a.freq_scale,
    }
    if not frame:
        return {**options, "time_scale": a.time_scale, "time_canvas": a.time_canvas}
    spans = {"span_length": a.span_length, "min_spans": a.min_spans}
    return {
        **options,
        "mask_kind": cfg.masking.kind,
        "mask_ratio": cfg.masking.ratio,
        "mask_options": spans if cfg.masking.kind == "time_span" else {},
        "symmetric": a.symmetric,
    }


def prepare_run_dir(cfg: Config, resume: bool) -> Path:
    """Create (or check, when resuming) the run directory; never overwrite a previous run."""
    run_dir = (
        Path(cfg.out)
        if cfg.out
        else Path("runs") / f"{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if resume:
        if latest_checkpoint(run_dir) is None:
            raise ConfigError(f"--resume: no checkpoint to resume from in {run_dir}")
    elif latest_checkpoint(run_dir) is not None:
        raise ConfigError(
            f"{run_dir} already holds checkpoints of a run; pass --resume to continue it "
            "or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.out = str(run_dir)
    return run_dir


def pretrain(cfg: Config, *, resume: bool = False) -> RunResult:
    """Run (or resume) pretraining as ``cfg`` says; returns where everything was saved."""
    t_start = time.perf_counter()
    device = resolve_device(cfg.train.device)
    if cfg.train.amp == "fp16" and device.type == "cpu":
        raise ConfigError("train.amp=fp16 needs CUDA (loss scaling); use bf16 or none on CPU")

    # data first: a source with no usable file must stop the run before anything is built
    demo = {
        "num_clips": cfg.data.demo_clips,
        "sample_rate": cfg.data.sample_rate,
        "clip_seconds": cfg.data.demo_clip_seconds,
        "seed": cfg.train.seed,
    }
    source = open_source(cfg.data.source, demo_options=demo if cfg.data.source is None else None)
    dataset = ClipDataset(source, cfg.data.sample_rate, cfg.data.clip_seconds, seed=cfg.train.seed)
    # decided (and a bad choice refused) before the run directory exists
    loader_kind = resolve_loader(cfg.data.loader, source)
    if cfg.train.epochs is not None:
        cfg.train.steps = max(1, math.ceil(cfg.train.epochs * len(dataset) / cfg.effective_batch))

    run_dir = prepare_run_dir(cfg, resume)
    torch.manual_seed(cfg.train.seed)
    frontend = LogMel(
        cfg.frontend.preset,
        backend=cfg.frontend.backend,
        n_mels=cfg.frontend.n_mels,
        sample_rate=cfg.data.sample_rate,
        # the loader already rejects non-finite audio; the check would sync host and device
        check_finite=False,
    ).to(device)
    patch = {"patch_size": cfg.model.patch_size} if cfg.model.patch_size is not None else {}
    try:
        encoder = create_model(cfg.model.name, n_mels=cfg.frontend.n_mels, **patch)
    except TypeError as e:  # an override this encoder does not take (MAST has no patch_size)
        raise ConfigError(f"model {cfg.model.name!r}: {e}") from None
    recipe = build_recipe(cfg.recipe, encoder, **recipe_options(cfg)).to(device)
    optimizer = torch.optim.AdamW(
        param_groups(recipe, cfg.optim.weight_decay),
        lr=cfg.abs_lr,
        betas=cfg.optim.betas,
        fused=device.type == "cuda",  # one kernel for all parameters on GPU
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")

    start_step = 0
    if resume:
        step_found, path = latest_checkpoint(run_dir)
        state = load_checkpoint(path, map_location=device)
        recipe.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        log.info(f"resuming {run_dir} from step {start_step} ({path.name})")
    (run_dir / "config.json").write_text(cfg.to_json())
    _print_config(cfg, device, len(dataset), recipe)

    if cfg.train.compile:
        _compile_blocks(recipe)
    metrics = MetricsLog(run_dir / "metrics.jsonl", truncate_after=start_step)
    n_frames = int(frontend.num_frames(dataset.clip_samples))
    flops_per_clip = recipe.train_flops_per_clip(n_frames)
    peak = peak_flops(device, cfg.train.amp)

    accum = cfg.optim.accum_steps
    loader = build_loader(
        dataset,
        cfg.train.batch_size,
        loader=loader_kind,  # DALI or torch: the same batches either way
        seed=cfg.train.seed,
        start_batch=start_step * accum,
        num_workers=cfg.data.num_workers,
        device=device,
    )
    mask_gen = torch.Generator(device=device)
    end_step = cfg.train.steps
    if cfg.train.stop_after is not None:
        end_step = min(end_step, cfg.train.stop_after)

    def checkpoint(step: int) -> None:
        save_checkpoint(
            run_dir,
            step,
            {
                "step": step,
                "model": recipe.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "config": cfg.to_dict(),
            },
            keep=cfg.train.keep_ckpts,
        )

    progress = _progress(cfg, start_step)
    recipe.train()
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    stat_sums: dict[str, torch.Tensor] = {}  # the recipe's extra scalars, summed on device
    loss_count, last_loss = 0, None
    # optional hooks of recipes with schedules or an EMA teacher (fastspec.recipes docstring)
    before_step = getattr(recipe, "before_step", None)
    after_step = getattr(recipe, "after_step", None)
    health = getattr(recipe, "health", None)
    t_window, steps_window = time.perf_counter(), 0
    step = start_step
    in_update = False
    try:
        while step < end_step:
            lr, wd = lr_at(step, cfg), weight_decay_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
                if group.get("decay", True):
                    group["weight_decay"] = wd
            if before_step is not None:
                before_step(step, cfg.train.steps)
            step_loss = torch.zeros((), dtype=torch.float32, device=device)
            for micro in range(accum):
                batch = next(loader)  # logs and counts files skipped while filling it
                wave = batch["wave"].to(device, non_blocking=True)
                lengths = batch["lengths"].to(device, non_blocking=True)
                with torch.no_grad():
                    mel = frontend(wave, lengths)  # [B, T, F] float32, no gradient needed
                mask_gen.manual_seed(_mask_seed(cfg.train.seed, step * accum + micro))
                with _autocast(device, cfg.train.amp):
                    out = recipe(
                        mel, generator=mask_gen, frame_lengths=frontend.num_frames(lengths)
                    )
                loss = out["loss"] / accum
                scaler.scale(loss).backward()
                step_loss += loss.detach().float()
                for name, value in out.items():
                    if name != "loss":
                        total = stat_sums.setdefault(name, torch.zeros((), device=device))
                        total += value.detach().float() / accum

            if cfg.train.nonfinite == "skip" and not bool(torch.isfinite(step_loss)):
                # host sync (skip mode only): the decision must precede the optimizer step
                log.warning(f"step {step}: non-finite loss, step skipped (train.nonfinite=skip)")
                optimizer.zero_grad(set_to_none=True)
                step += 1
                progress.update(1)
                continue
            if cfg.optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(recipe.parameters(), cfg.optim.grad_clip)
            in_update = True  # an interrupt from here to step += 1 must not checkpoint
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step(step, cfg.train.steps)  # e.g. the EMA teacher follows the student
            nonfinite |= ~torch.isfinite(step_loss)
            loss_sum += step_loss
            loss_count += 1
            step += 1
            in_update = False
            steps_window += 1
            progress.update(1)

            at_ckpt = step % cfg.train.ckpt_every == 0 or step == end_step
            if step % cfg.train.log_every == 0 or at_ckpt:
                # host sync, once per logging interval: read the mean loss and the NaN flag
                if bool(nonfinite):
                    raise NonFiniteLossError(
                        f"non-finite loss between steps {step - loss_count} and {step}; "
                        f"stopping, the last checkpoint on disk is intact "
                        f"(lower optim.blr, or set train.nonfinite=skip)"
                    )
                names = list(stat_sums)
                sums = torch.stack([loss_sum, *stat_sums.values()]).tolist()  # one transfer
                last_loss = sums[0] / loss_count
                stats = {name: v / loss_count for name, v in zip(names, sums[1:])}
                elapsed = time.perf_counter() - t_window
                clips_per_s = steps_window * cfg.effective_batch / elapsed
                record = {
                    "step": step,
                    "loss": last_loss,
                    "lr": lr,
                    "clips_per_s": clips_per_s,
                    "ms_per_step": 1000.0 * elapsed / steps_window,
                    # unusable files: found when opening the source, and while loading
                    "skipped_files": len(source.skipped) + len(loader.skipped_files),
                }
                record.update(stats)
                if health is not None:
                    for warning in health(stats):  # e.g. collapse of a teacher-student recipe
                        log.warning(f"step {step}: {warning}")
                if peak:
                    # MFU = achieved model FLOP/s over the device's dense peak; FLOPs per clip
                    # from the recipe's analytic count (fastspec.models.flops)
                    record["mfu"] = flops_per_clip * clips_per_s / peak
                metrics.write(record)
                progress.set_postfix(loss=f"{last_loss:.4f}", clips_s=f"{clips_per_s:.0f}")
                loss_sum.zero_()
                for total in stat_sums.values():
                    total.zero_()
                loss_count, steps_window, t_window = 0, 0, time.perf_counter()
            if at_ckpt:
                checkpoint(step)
    except KeyboardInterrupt:
        progress.close()
        # host sync: only on the way out; a half-applied update is not a resumable state
        if not in_update and not bool(nonfinite) and step > start_step:
            checkpoint(step)
            log.warning(f"interrupted at step {step}; checkpoint written, continue with --resume")
        raise
    finally:
        progress.close()
        loader.close()  # stop persistent workers now, not at garbage collection
        plot_loss(run_dir / "metrics.jsonl", run_dir / "loss.png")

    if step == start_step:  # no step ran (--steps 0, or resumed at the end): still checkpoint
        checkpoint(step)
    # the exported encoder meets arbitrary user input: it checks it again
    export_frontend = dataclasses.replace(frontend.config, check_finite=True)
    encoder_path = export_encoder(recipe.encoder, export_frontend, run_dir)
    seconds = time.perf_counter() - t_start
    where = (
        "finished" if step >= cfg.train.steps else f"stopped at step {step} of {cfg.train.steps}"
    )
    log.info(
        f"{where} in {seconds:.1f} s; run directory {run_dir}: config.json, metrics.jsonl, "
        f"loss.png, checkpoints/, encoder.safetensors + encoder.json"
    )
    return RunResult(run_dir, step, last_loss, encoder_path, seconds)


def _progress(cfg: Config, start_step: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.train.steps,
        initial=start_step,
        disable=not cfg.train.progress,
        desc=cfg.recipe,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
    )


def _print_config(cfg: Config, device: torch.device, n_clips: int, recipe: nn.Module) -> None:
    n_params = sum(p.numel() for p in recipe.encoder.parameters())
    derived = {
        "device": str(device),
        "clips": n_clips,
        "effective_batch": cfg.effective_batch,
        "abs_lr": cfg.abs_lr,
        "encoder_params_M": round(n_params / 1e6, 2),
        "threads": torch.get_num_threads(),
    }
    log.info("config:\n" + cfg.to_json() + "\nderived: " + json.dumps(derived))


__all__ = ["pretrain", "RunResult", "NonFiniteLossError", "lr_at", "resolve_device"]
