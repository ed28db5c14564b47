"""One trainer on any number of processes: torchrun, torch.distributed, DDP and FSDP2.

``torchrun --nproc-per-node N -m fastspec pretrain ...`` starts N copies of the command; each
reads its place from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), joins the
process group (NCCL on CUDA with ``cuda:LOCAL_RANK`` as its device, gloo on CPU) and wraps the
recipe:

- ``ddp`` (default with more than one rank): every rank holds the whole model; gradients are
  all-reduced (averaged) on the last micro-step of each optimizer step only (``no_sync`` before).
  Buffers are not broadcast: every statistic a recipe keeps (DINO centres, batch-norm running
  averages, the mixup memory) is computed over the global batch already
  (``fastspec.recipes.collective``), so it is the same on every rank.
- ``fsdp`` (FSDP2): ``fully_shard`` on every transformer block (student and teacher) and on the
  root, so each rank holds 1/N of parameters, gradients and optimizer state; on CUDA parameters
  are gathered in bf16 and gradients reduced in fp32 (``MixedPrecisionPolicy``) when the run
  trains in bf16. Checkpoints are consolidated (full state dicts), so either kind of run resumes
  the other at any world size.

A collective waits at most ``train.dist_timeout`` seconds; a rank that died or hung then makes
the others stop with :class:`RankFailure`, whose message says so and where the last checkpoint
is.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from fastspec._logging import get_logger
from fastspec.config_base import ConfigError

log = get_logger("fastspec.train")


class RankFailure(RuntimeError):
    """Another rank died, hung past ``train.dist_timeout``, or a collective failed."""


def world_size() -> int:
    """Ranks of this run: the process group's size, else torchrun's ``WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def restarted_by_torchrun() -> bool:
    """Whether torchrun restarted this worker (``--max-restarts``) after a failure."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


@dataclass
class DistState:
    """Where this process stands in the run."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    parallel: str  # none | ddp | fsdp
    backend: str | None  # nccl | gloo | None (one process)
    owns_group: bool = False  # this trainer created the process group (and destroys it)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, writes and exports."""
        return self.rank == 0

    def report(self) -> dict:
        return {"rank": self.rank, "world_size": self.world, "local_rank": self.local_rank,
                "parallel": self.parallel, "backend": self.backend, "device": str(self.device)}  # fmt: skip


def resolve_device(name: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """``train.device`` as a device; under torchrun CUDA ranks take ``cuda:LOCAL_RANK``."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available here")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if world > 1 and name.startswith("cuda"):
        if name not in ("cuda", f"cuda:{local_rank}"):
            raise ConfigError(
                f"train.device={name!r}: under torchrun each rank uses cuda:LOCAL_RANK; pass "
                "--device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
            )
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device_name: str, parallel: str, timeout_s: float) -> DistState:
    """Join torchrun's process group (if there is one) and pick this rank's device."""
    world = world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank, world)
    if world == 1:
        if parallel == "fsdp":
            log.info("train.parallel=fsdp with one process: nothing to shard, training plainly")
        return DistState(0, 1, 0, device, "none", None)
    if parallel == "none":
        raise ConfigError(
            f"train.parallel=none but torchrun started {world} ranks; use ddp or fsdp"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    mode = "ddp" if parallel == "auto" else parallel
    if rank != 0:
        get_logger().setLevel("WARNING")  # only rank 0 tells the story; failures still show
    return DistState(rank, world, local_rank, device, mode, backend, owns)


def shutdown(state: DistState) -> None:
    """Leave the process group this trainer created (all ranks together)."""
    if state.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(state: DistState) -> None:
    if state.world > 1:
        dist.barrier()


def wrap_model(recipe: nn.Module, state: DistState, amp: str) -> nn.Module:
    """The module the step calls: the recipe itself, DDP around it, or the FSDP2-sharded
    recipe (sharded in place: per transformer block, then the root)."""
    if state.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [state.device.index] if state.device.type == "cuda" else None
        # recipe statistics are global already: broadcasting buffers would only cost time
        return DistributedDataParallel(recipe, device_ids=ids, broadcast_buffers=False)
    if state.parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy()
        if state.device.type == "cuda" and amp == "bf16":
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in transformer_blocks(recipe):
            fully_shard(block, mp_policy=policy)
        fully_shard(recipe, mp_policy=policy)
    return recipe


def transformer_blocks(recipe: nn.Module) -> list[nn.Module]:
    """Every block of every ``blocks`` ModuleList (encoders, decoders, teachers)."""
    found = []
    for module in recipe.modules():
        blocks = getattr(module, "blocks", None)
        if isinstance(blocks, nn.ModuleList):
            found.extend(blocks)
    return found


def grad_sync(model: nn.Module, state: DistState, sync: bool):
    """Context of one micro-step's backward: gradients are reduced only when ``sync``."""
    if state.parallel == "ddp" and not sync:
        return model.no_sync()
    if state.parallel == "fsdp":
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def reduce_metrics(values: torch.Tensor, seconds: float, state: DistState) -> tuple[list, float]:
    """Mean of ``values`` [K] over ranks and the slowest rank's ``seconds`` (stragglers show):
    two small collectives (a sum and a max) and one host read, once per logging interval."""
    times = torch.tensor([seconds], dtype=torch.float64, device=values.device)
    if state.world > 1:
        dist.all_reduce(values)
        values = values / state.world
        dist.all_reduce(times, op=dist.ReduceOp.MAX)
    return values.tolist(), float(times.item())  # host sync: the logging interval's only one


def any_rank(flag: torch.Tensor, state: DistState) -> bool:
    """Whether ``flag`` (a bool tensor) is set on any rank (host sync)."""
    value = flag.to(torch.float32).reshape(1)
    if state.world > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def failure_message(error: BaseException, state: DistState, run_dir, timeout_s: float) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"rank {state.rank} of {state.world}: a collective failed ({first[:200]}): another rank "
        f"died, or hung for more than train.dist_timeout={timeout_s:g} s. Stopping; the last "
        f"complete checkpoint in {run_dir}/checkpoints is intact: continue with --resume "
        f"(under torchrun --max-restarts the job resumes from it by itself)"
    )


def distributed_report() -> dict:
    """What ``fastspec info`` says about multi-process training here and now."""
    available = dist.is_available()
    world = world_size()
    return {
        "available": available,
        "nccl": available and dist.is_nccl_available(),
        "gloo": available and dist.is_gloo_available(),
        "torchrun": "TORCHELASTIC_RUN_ID" in os.environ,
        "world_size": world,
        "rank": int(os.environ.get("RANK", "0")),
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        "backend": "nccl" if torch.cuda.is_available() else "gloo",
        "parallel": "ddp (train.parallel=auto)" if world > 1 else "none: one process",
    }


def is_collective_error(error: BaseException) -> bool:
    """A failure of the process group rather than of this rank's own computation."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    markers = ("Connection closed by peer", "Connection reset", "timed out", "Timed out",
               "NCCL", "Gloo", "gloo", "Socket")  # fmt: skip
    return isinstance(error, RuntimeError) and any(m in text for m in markers)


__all__ = [
    "DistState",
    "RankFailure",
    "any_rank",
    "barrier",
    "distributed_report",
    "failure_message",
    "grad_sync",
    "init_distributed",
    "is_collective_error",
    "reduce_metrics",
    "resolve_device",
    "restarted_by_torchrun",
    "shutdown",
    "transformer_blocks",
    "wrap_model",
]
