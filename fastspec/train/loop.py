"""The trainer: one step, the logging interval, checkpoints and export, on 1 to N ranks.

One step, as in DESIGN.md §3: each rank moves its micro-batch of waveforms to its device, turns
them (or the views a recipe cuts from them: its ``waveform_views`` hook, ASiT's rolled crops)
into normalised log-mel features (no gradient), and the recipe masks and encodes them under
one autocast context; after the last micro-step the averaged gradient (all-reduced over the ranks
by DDP, reduce-scattered by FSDP2) updates the weights with AdamW under a warm-up + cosine
schedule, and the recipe's hooks run (EMA teacher). :mod:`fastspec.train.build` builds the run,
:mod:`fastspec.train.distributed` holds what is specific to torchrun.

World-size invariance: ``train.batch_size`` is one rank's micro-batch; the step's global batch is
batch x accumulation x world clips, cut by the sampler into the same clips whatever the layout,
and every clip's crops, masks and augmentations come from a :class:`ClipRng` keyed by (seed,
step, the clip's position in the global batch), so 1 x 16, 2 ranks x 8 and 2 accumulation steps
of 8 draw the same. The learning rate follows the global batch.

Host-device syncs: the steady-state step has none. The loss is read back only every
``train.log_every`` steps and before each checkpoint, except in ``train.nonfinite=skip`` mode,
which must decide before each optimizer step.

Reproducibility: weights come from ``train.seed``; the data order, crops and masks depend only on
(seed, step, clip position), never on a global RNG state, so a run resumed from a checkpoint, at
any world size with the same global batch, reproduces the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fastspec._logging import get_logger
from fastspec.data import build_loader
from fastspec.encoder import export_encoder
from fastspec.frontend.mel_range import draw_mel_ranges, logmel_mel_range
from fastspec.masking.clip_rng import ClipRng, clip_keys, uniform_rows
from fastspec.models.attention import any_padding
from fastspec.train.build import Run, build_run, make_recipe
from fastspec.train.checkpoint import gather_state, save_checkpoint
from fastspec.train.clipping import clip_gradients_
from fastspec.train.config import Config
from fastspec.train.distributed import (
    RankFailure,
    any_rank,
    barrier,
    failure_message,
    grad_sync,
    is_collective_error,
    reduce_metrics,
    resolve_device,
    shutdown,
)
from fastspec.train.metrics import MetricsLog, peak_flops, plot_loss
from fastspec.train.schedule import lr_at, set_schedules

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


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Trainer:
    """Runs the steps of a built :class:`~fastspec.train.build.Run`."""

    def __init__(self, run: Run):
        self.run, self.cfg, self.dist = run, run.cfg, run.dist
        self.device = run.dist.device
        self.accum = run.cfg.optim.accum_steps
        self.step_index = run.start_step
        self.in_update = False  # an interrupt inside the optimizer update must not checkpoint
        self.last_loss: float | None = None
        # on-device sums over the logging interval: no host sync per step
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        self.stat_sums: dict[str, torch.Tensor] = {}  # the recipe's extra scalars
        self.loss_count, self.steps_window = 0, 0
        self.t_window = time.perf_counter()
        # optional hooks of recipes with schedules or an EMA teacher (fastspec.recipes docstring)
        self.before_step = getattr(run.recipe, "before_step", None)
        self.after_step = getattr(run.recipe, "after_step", None)
        self.health = getattr(run.recipe, "health", None)
        # a recipe that cuts its views from the waveform (ASiT) gets them featurised here
        self.waveform_views = getattr(run.recipe, "waveform_views", None)
        # MaskSpec's random mel range per clip (checked against the preset by build_run)
        jitter = self.cfg.frontend.mel_range_jitter
        self.mel_range_jitter = jitter if any(jitter) else None
        if self.mel_range_jitter is not None:
            log.info(
                f"mel-range augmentation {jitter} Hz: training features on the torch backend, "
                "one Kaldi filter bank per clip"
            )
        n_frames = int(run.frontend.num_frames(run.dataset.clip_samples))
        self.flops_per_clip = run.recipe.train_flops_per_clip(n_frames)
        self.peak = peak_flops(self.device, run.amp)
        batch, world = self.cfg.train.batch_size, self.dist.world
        if run.clips_seen % (batch * world):
            log.warning(
                f"resuming at clip {run.clips_seen}, not a multiple of batch x world = "
                f"{batch * world}: the data order restarts at the nearest batch before it"
            )
        self.loader = build_loader(
            run.dataset,
            batch,
            loader=run.loader_kind,  # DALI or torch: the same batches either way
            seed=self.cfg.train.seed,
            start_batch=run.clips_seen // (batch * world),
            num_workers=self.cfg.data.num_workers,
            device=self.device,
            rank=self.dist.rank,
            world_size=world,
        )
        # only rank 0 writes metrics (a resumed run's file is truncated to its step once)
        self.metrics = None
        if self.dist.main:
            self.metrics = MetricsLog(run.run_dir / "metrics.jsonl", truncate_after=run.start_step)

    # ---- one step ------------------------------------------------------------------------

    def train_step(self, step: int) -> float:
        """Forward and backward of every micro-batch of ``step``, then the update; returns lr."""
        run, cfg = self.run, self.cfg
        lr = set_schedules(run.optimizer, step, cfg)
        if self.before_step is not None:
            self.before_step(step, cfg.train.steps)
        step_loss = torch.zeros((), dtype=torch.float32, device=self.device)
        batch_size, world = cfg.train.batch_size, self.dist.world
        for micro in range(self.accum):
            batch = next(self.loader)  # logs and counts files skipped while filling it
            wave = batch["wave"].to(self.device, non_blocking=True)
            lengths = batch["lengths"].to(self.device, non_blocking=True)
            # read on the host before the move (no sync): no clip padded, no attention mask
            padded = any_padding(batch["lengths"], batch["wave"].shape[-1])
            # this micro-batch's clips sit at these positions of the step's global batch
            first = (micro * world + self.dist.rank) * batch_size
            rng = ClipRng.for_clips(cfg.train.seed, step, first, batch_size, self.device)
            # what still draws from torch's global RNG (stochastic depth) restarts from (seed,
            # step, micro-step, rank): a resumed run draws what the uninterrupted one drew
            torch.manual_seed(int(clip_keys(cfg.train.seed, step, first, 1, "cpu")[0]))
            with torch.no_grad():
                if self.waveform_views is not None:
                    # [V * B, S'] views cut from the waveform, featurised whole (no lengths)
                    wave = self.waveform_views(wave, lengths if padded else None, rng)
                    lengths, padded = None, False
                if self.mel_range_jitter is None:
                    mel = run.frontend(wave, lengths)  # [B or V * B, T, F] float32, no grad
                else:  # a mel range per clip, drawn from its keyed stream before its masks
                    u = uniform_rows(rng, (wave.shape[0], 2), self.device)
                    f_min, f_max = draw_mel_ranges(u, run.frontend.config, self.mel_range_jitter)
                    mel = logmel_mel_range(
                        wave, lengths if padded else None, run.frontend.config, f_min, f_max
                    )
            frame_lengths = run.frontend.num_frames(lengths) if padded else None
            with grad_sync(run.model, self.dist, sync=micro == self.accum - 1):
                with _autocast(self.device, run.amp):
                    out = run.model(mel, generator=rng, frame_lengths=frame_lengths)
                loss = out["loss"] / self.accum
                run.scaler.scale(loss).backward()
            step_loss += loss.detach().float()
            for name, value in out.items():
                if name != "loss":
                    total = self.stat_sums.setdefault(name, torch.zeros((), device=self.device))
                    total += value.detach().float() / self.accum

        if cfg.train.nonfinite == "skip" and any_rank(~torch.isfinite(step_loss), self.dist):
            # host sync (skip mode only): the decision must precede the optimizer step
            log.warning(f"step {step}: non-finite loss, step skipped (train.nonfinite=skip)")
            run.optimizer.zero_grad(set_to_none=True)
            return lr
        if cfg.optim.grad_clip > 0:
            run.scaler.unscale_(run.optimizer)
            # on the reduced gradients: the global norm, or each parameter's own (DINO, ASiT)
            clip_gradients_(run.recipe.parameters(), cfg.optim.grad_clip, cfg.optim.clip_mode)
        self.in_update = True
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        if self.after_step is not None:
            self.after_step(step, cfg.train.steps)  # e.g. the EMA teacher follows the student
        self.nonfinite |= ~torch.isfinite(step_loss)
        self.loss_sum += step_loss
        self.loss_count += 1
        return lr

    # ---- the logging interval ----------------------------------------------------------------

    def log_interval(self, step: int, lr: float) -> None:
        """Read the interval's means back (once), check them, write one metrics record."""
        names = list(self.stat_sums)
        sums = torch.stack([self.loss_sum, self.nonfinite.float(), *self.stat_sums.values()])
        elapsed = time.perf_counter() - self.t_window
        # host sync, once per logging interval: means over ranks, slowest rank's time
        values, slowest = reduce_metrics(sums, elapsed, self.dist)
        if values[1] > 0:
            raise NonFiniteLossError(
                f"non-finite loss between steps {step - self.loss_count} and {step}; "
                f"stopping, the last checkpoint on disk is intact "
                f"(lower optim.blr, or set train.nonfinite=skip)"
            )
        count = max(self.loss_count, 1)
        self.last_loss = values[0] / count
        stats = {name: v / count for name, v in zip(names, values[2:])}
        clips_per_s = self.steps_window * self.cfg.effective_batch / slowest  # all ranks
        record = {
            "step": step,
            "loss": self.last_loss,
            "lr": lr,
            "clips_per_s": clips_per_s,
            "ms_per_step": 1000.0 * slowest / self.steps_window,  # the slowest rank's
            # unusable files: found when opening the source, and while loading (rank 0's)
            "skipped_files": len(self.run.source.skipped) + len(self.loader.skipped_files),
            **stats,
        }
        if self.peak:
            # MFU = achieved model FLOP/s over the dense peak of all ranks' devices; FLOPs per
            # clip from the recipe's analytic count (fastspec.models.flops)
            record["mfu"] = self.flops_per_clip * clips_per_s / (self.peak * self.dist.world)
        if self.dist.main:
            if self.health is not None:
                for warning in self.health(stats):  # e.g. collapse of a teacher-student recipe
                    log.warning(f"step {step}: {warning}")
            self.metrics.write(record)
        self.progress.set_postfix(loss=f"{self.last_loss:.4f}", clips_s=f"{clips_per_s:.0f}")
        self.loss_sum.zero_()
        for total in self.stat_sums.values():
            total.zero_()
        self.loss_count, self.steps_window, self.t_window = 0, 0, time.perf_counter()

    # ---- checkpoint and export ---------------------------------------------------------------

    def checkpoint(self, step: int) -> None:
        """Consolidated state of every rank, written by rank 0; the others wait until it is
        complete on disk (``fastspec.train.checkpoint``)."""
        run = self.run
        model_state, optim_state = gather_state(
            run.model, run.optimizer, fsdp=self.dist.parallel == "fsdp"
        )
        if self.dist.main:
            state = {
                "step": step,
                "model": model_state,
                "optimizer": optim_state,
                "scaler": run.scaler.state_dict(),
                "config": self.cfg.to_dict(),
                "clips_seen": step * self.cfg.effective_batch,  # the data position
                "world_size": self.dist.world,
            }
            save_checkpoint(run.run_dir, step, state, keep=self.cfg.train.keep_ckpts)
        barrier(self.dist)

    def export(self) -> Path:
        """The encoder for ``load_encoder`` (rank 0), from the full weights."""
        run = self.run
        encoder = run.recipe.encoder
        if self.dist.parallel == "fsdp":  # gather the shards into a plain copy on the CPU
            model_state, _ = gather_state(run.model, run.optimizer, fsdp=True)
            if self.dist.main:
                plain = make_recipe(self.cfg, torch.device("cpu"))
                plain.load_state_dict(model_state)
                encoder = plain.encoder
        path = run.run_dir / "encoder.safetensors"
        if self.dist.main:
            # the exported encoder meets arbitrary user input: it checks it again
            export_frontend = dataclasses.replace(run.frontend.config, check_finite=True)
            path = export_encoder(encoder, export_frontend, run.run_dir)
        barrier(self.dist)
        return path

    # ---- the run -----------------------------------------------------------------------------

    def fit(self, end_step: int) -> None:
        """Steps from the start to ``end_step``, logging and checkpointing on the way."""
        cfg, run = self.cfg, self.run
        self.progress = _progress(cfg, run.start_step, enabled=self.dist.main)
        run.model.train()
        step = run.start_step
        try:
            while step < end_step:
                lr = self.train_step(step)
                step += 1
                self.step_index, self.in_update = step, False
                self.steps_window += 1
                self.progress.update(1)
                at_ckpt = step % cfg.train.ckpt_every == 0 or step == end_step
                if step % cfg.train.log_every == 0 or at_ckpt:
                    self.log_interval(step, lr)
                if at_ckpt:
                    self.checkpoint(step)
        except KeyboardInterrupt:
            # host sync: only on the way out; a half-applied update is not a resumable state
            done = not self.in_update and not bool(self.nonfinite) and step > run.start_step
            if done and self.dist.world == 1:
                self.checkpoint(step)
                log.warning(
                    f"interrupted at step {step}; checkpoint written, continue with --resume"
                )
            raise
        finally:
            self.progress.close()
            self.loader.close()  # stop persistent workers now, not at garbage collection
            if self.metrics is not None:
                self.metrics.close()
                plot_loss(run.run_dir / "metrics.jsonl", run.run_dir / "loss.png")


def pretrain(cfg: Config, *, resume: bool = False) -> RunResult:
    """Run (or resume) pretraining as ``cfg`` says; returns where everything was saved.

    Under torchrun every rank calls this with the same config; rank 0 writes the run directory.
    """
    t_start = time.perf_counter()
    run = build_run(cfg, resume)
    end_step = cfg.train.steps
    if cfg.train.stop_after is not None:
        end_step = min(end_step, cfg.train.stop_after)
    encoder_path = run.run_dir / "encoder.safetensors"
    if run.start_step > 0 and run.start_step >= end_step:
        why = "finished" if run.start_step >= cfg.train.steps else "stopped at train.stop_after"
        log.warning(
            f"--resume: {run.run_dir} is already at step {run.start_step} of {cfg.train.steps} "
            f"({why}); nothing left to do (raise --steps to train further)"
        )
        shutdown(run.dist)
        return RunResult(run.run_dir, run.start_step, None, encoder_path, 0.0)
    if run.dist.main:
        (run.run_dir / "config.json").write_text(cfg.to_json())
        _print_config(cfg, run)
    trainer = Trainer(run)
    try:
        trainer.fit(end_step)
        if trainer.step_index == run.start_step:  # no step ran (--steps 0): still checkpoint
            trainer.checkpoint(trainer.step_index)
        encoder_path = trainer.export()
    except Exception as e:
        if run.dist.world > 1 and is_collective_error(e):
            raise RankFailure(
                failure_message(e, run.dist, run.run_dir, cfg.train.dist_timeout)
            ) from e
        raise
    shutdown(run.dist)
    step = trainer.step_index
    seconds = time.perf_counter() - t_start
    where = (
        "finished" if step >= cfg.train.steps else f"stopped at step {step} of {cfg.train.steps}"
    )
    log.info(
        f"{where} in {seconds:.1f} s; run directory {run.run_dir}: config.json, metrics.jsonl, "
        f"loss.png, checkpoints/, encoder.safetensors + encoder.json"
    )
    return RunResult(run.run_dir, step, trainer.last_loss, encoder_path, seconds)


def _progress(cfg: Config, start_step: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.train.steps,
        initial=start_step,
        disable=not (cfg.train.progress and enabled),  # rank 0 only
        desc=cfg.recipe,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
    )


def _print_config(cfg: Config, run: Run) -> None:
    n_params = sum(p.numel() for p in run.recipe.encoder.parameters())
    derived = {
        "device": str(run.dist.device),
        "precision": run.amp,
        "world_size": run.dist.world,
        "parallel": run.dist.parallel,
        "clips": len(run.dataset),
        "batch_per_rank": cfg.train.batch_size,
        "effective_batch": cfg.effective_batch,  # batch x accumulation x world
        "abs_lr": cfg.abs_lr,
        "encoder_params_M": round(n_params / 1e6, 2),
        "threads": torch.get_num_threads(),
    }
    log.info("config:\n" + cfg.to_json() + "\nderived: " + json.dumps(derived))


__all__ = [
    "NonFiniteLossError",
    "RunResult",
    "Trainer",
    "lr_at",
    "pretrain",
    "resolve_device",
]
