"""The trainer on 2 processes (torchrun, gloo, CPU): the same run as one process, any way round.

Each test starts ``torchrun --standalone --nproc-per-node 2 -m fastspec pretrain`` on tiny
models; the one-process references run in this process through the same command line
(``fastspec.cli.main``). Runs are compared with ``fastspec.train.compare``: for every tensor of
the recipe's state, the norm of the difference over the norm of the training update (float32
reduction order gives about 1e-6 to 1e-3 after Adam; a different global batch about 1).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastspec.cli import main
from fastspec.data.sampler import BatchOrder, EpochBatchSampler
from fastspec.train.checkpoint import list_checkpoints, load_checkpoint
from fastspec.train.compare import compare_runs
from fastspec.train.metrics import read_metrics

TOLERANCE = 1e-2  # of each tensor's training update (the done-when bound)

TINY = ["--device", "cpu", "--amp", "none", "--no-progress", "data.demo_clips=32",
        "data.demo_clip_seconds=1.0", "data.clip_seconds=1.0", "frontend.n_mels=64",
        "train.log_every=1", "optim.warmup_steps=1"]  # fmt: skip
RECIPE_FLAGS = {
    "maskspec": ["model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=4"],
    "asit": [
        "asit.crop_seconds=0.5",
        "asit.out_dim_global=64",
        "asit.out_dim_local=32",
        "asit.head_hidden_dim=32",
        "asit.head_bottleneck_dim=16",
        "asit.rec_hidden_dim=32",
        "asit.rec_bottleneck_dim=16",
    ],  # fmt: skip
    "atst-clip": [
        "atst.crop_seconds=0.5",
        "atst.proj_hidden=64",
        "atst.proj_dim=32",
        "atst.memory_size=24",
        "frontend.n_mels=64",
    ],  # fmt: skip
}


def args(recipe: str, out: Path, batch: int, steps: int, *extra: str) -> list[str]:
    return ["pretrain", "--recipe", recipe, "--out", str(out), "--batch-size", str(batch),
            "--steps", str(steps), *TINY, *RECIPE_FLAGS[recipe], *extra]  # fmt: skip


def torchrun_cmd(cli_args: list[str], *launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node=2", *launcher, "-m", "fastspec", *cli_args]  # fmt: skip


def torchrun(cli_args: list[str]) -> None:
    done = subprocess.run(torchrun_cmd(cli_args), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]


def one_process(cli_args: list[str]) -> None:
    assert main(cli_args) == 0


def assert_same_run(runs: dict[str, Path], other: Path) -> None:
    c = compare_runs(runs["full"], other, runs["init"], runs["floor"], tolerance=TOLERANCE)
    assert c["ok"], c
    losses = [r["loss"] for r in read_metrics(runs["full"] / "metrics.jsonl")]
    others = [r["loss"] for r in read_metrics(other / "metrics.jsonl")]
    assert len(losses) == len(others) == 4
    torch.testing.assert_close(others, losses, rtol=1e-3, atol=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Per recipe (built on first use): the initial weights, the 1 x 16 run of 4 steps, and
    the same run on another thread count (only the float reduction order changes: the noise
    floor of tensors with a zero gradient, ``fastspec.train.compare.compare_runs``)."""
    root, built = tmp_path_factory.mktemp("reference"), {}

    def get(recipe: str) -> dict[str, Path]:
        if recipe not in built:
            runs = {name: root / f"{recipe}-{name}" for name in ("init", "full", "floor")}
            one_process(args(recipe, runs["init"], 16, 0))
            one_process(args(recipe, runs["full"], 16, 4))
            threads = torch.get_num_threads()
            torch.set_num_threads(1 if threads > 1 else 2)
            try:
                one_process(args(recipe, runs["floor"], 16, 4))
            finally:
                torch.set_num_threads(threads)
            built[recipe] = runs
        return built[recipe]

    return get


@pytest.mark.parametrize("recipe", ["maskspec", "asit", "atst-clip"])
def test_two_ranks_of_8_train_as_one_process_of_16(tmp_path, reference, recipe):
    torchrun(args(recipe, tmp_path / "2x8", 8, 4))
    assert_same_run(reference(recipe), tmp_path / "2x8")
    assert (tmp_path / "2x8" / "encoder.safetensors").is_file()


def test_fsdp2_on_two_ranks_then_resumed_on_one_trains_as_one_process(tmp_path, reference):
    """FSDP2 steps 1-2 on 2 ranks, a consolidated checkpoint, steps 3-4 on 1 process: 1 x 16."""
    out = tmp_path / "fsdp-2to1"
    torchrun(args("maskspec", out, 8, 4, "train.parallel=fsdp", "train.stop_after=2"))
    one_process(args("maskspec", out, 16, 4, "--resume"))
    assert_same_run(reference("maskspec"), out)


def test_one_process_resumed_on_two_ranks_trains_as_one_process(tmp_path, reference):
    out = tmp_path / "1to2"
    one_process(args("maskspec", out, 16, 4, "train.stop_after=2"))
    torchrun(args("maskspec", out, 8, 4, "--resume"))
    assert_same_run(reference("maskspec"), out)


def test_clip_keyed_draws_do_not_depend_on_how_the_batch_is_split():
    """What one process draws for 16 clips, two ranks draw as 8 + 8: crops, masks, views."""
    from fastspec.masking import sample_mask
    from fastspec.masking.clip_rng import ClipRng, uniform_rows

    def draws(first: int, count: int) -> list[torch.Tensor]:
        rng = ClipRng.for_clips(seed=3, step=7, first=first, count=count, device="cpu")
        crops = uniform_rows(rng, (2, count), "cpu", row_dim=1)  # [views, clips]
        mask = sample_mask("random", count, (8, 4), 0.75, generator=rng).mask
        views = rng.views(2)  # view-major rows: 2 x count
        noise = views.normal(2 * count, 3).reshape(2, count, 3)
        return [crops.T, mask, noise.transpose(0, 1)]  # clip-major, to slice and compare

    whole = draws(0, 16)
    halves = [draws(0, 8), draws(8, 8)]
    for i, full in enumerate(whole):
        torch.testing.assert_close(torch.cat([h[i] for h in halves]), full, rtol=0, atol=0)
    u = ClipRng.for_clips(0, 0, 0, 64, "cpu").uniform(64, 256)
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean().item() - 0.5) < 0.01
    assert all(torch.equal(a, b) for a, b in zip(draws(0, 16), whole))  # reproducible
    other_step = ClipRng.for_clips(3, 8, 0, 16, "cpu").uniform(16, 4)
    assert not torch.equal(other_step, ClipRng.for_clips(3, 7, 0, 16, "cpu").uniform(16, 4))


@pytest.mark.parametrize("batch, world, items", [(8, 2, 48), (3, 2, 20), (4, 3, 50)])
def test_each_clip_once_per_epoch_across_ranks(batch, world, items):
    orders = [BatchOrder(batch, seed=5, rank=r, world_size=world) for r in range(world)]
    samplers = [EpochBatchSampler(items, order) for order in orders]
    per_epoch = samplers[0].batches_per_epoch
    seen: list[tuple[int, int]] = []
    for sampler in samplers:
        stream = iter(sampler)
        for _ in range(2 * per_epoch):  # two epochs
            seen.extend(next(stream))
    for epoch in (0, 1):
        clips = [index for e, index in seen if e == epoch]
        assert len(clips) == len(set(clips)) == per_epoch * batch * world  # none twice
        assert items - len(clips) < batch * world  # only the remainder is left out


def _workers(launcher_pid: int) -> list[int]:
    """Worker processes of a torchrun launcher (its children, from /proc)."""
    children = []
    for task in Path(f"/proc/{launcher_pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children += [int(pid) for pid in text]
    return children


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_killed_rank_ends_the_job_with_a_message_and_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "killed"
    cli = args("maskspec", out, 4, 400, "train.ckpt_every=1", "train.dist_timeout=20")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(torchrun_cmd(cli), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)  # fmt: skip
    try:
        deadline = time.time() + 120
        while len(list_checkpoints(out)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert list_checkpoints(out), "the run wrote no checkpoint"
        os.kill(max(_workers(proc.pid)), signal.SIGKILL)  # one rank dies mid-run
        output, _ = proc.communicate(timeout=60)  # the others stop within bounded time
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "rank" in output and ("failed" in output.lower() or "error" in output.lower())
    step, path = list_checkpoints(out)[-1]
    assert load_checkpoint(path)["step"] == step  # the last checkpoint is complete


def test_a_worker_restarted_by_torchrun_resumes_by_itself(tmp_path, monkeypatch):
    """torchrun --max-restarts sets TORCHELASTIC_RESTART_COUNT: the same command resumes."""
    out = tmp_path / "restarted"
    one_process(args("maskspec", out, 8, 3, "train.stop_after=2"))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    one_process(args("maskspec", out, 8, 3))  # no --resume: the restart resumes by itself
    assert list_checkpoints(out)[-1][0] == 3
