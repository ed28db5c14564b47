"""Data loading throughput: clips per second delivered to the training step, DALI vs torch.

Run with ``pytest benchmarks/bench_data.py`` (under a minute on the 2-core CPU; results land in
benchmarks/results/data-<device>-<date>.json, see conftest.py). The corpus is the synthetic demo corpus (:class:`fastspec.data.DemoCorpus`: tones,
chirps, noise bursts, clicks) written out once per session as 10 s clips at 16 kHz in each
storage format the loaders read:

- ``wav``: one 16-bit PCM WAV file per clip (a folder);
- ``flac``: one 16-bit FLAC file per clip;
- ``shards-int16``: WebDataset tar shards of 16-bit WAV payloads (``fastspec shard``).

Each provider is a loader (``torch``: soundfile in 2 DataLoader worker processes; ``dali``: the
DALI pipeline with 2 CPU threads) streaming batches of 32 random 10 s crops, exactly as
``fastspec pretrain`` builds it (:func:`fastspec.data.build_loader`). The timed call takes
``BATCHES`` batches with ``next()`` and does nothing else with them, so the rate is the loader's
alone; the stream is warm (workers started, page cache hot) before timing. ``extra_info`` holds
``clips_per_s`` and ``audio_s_per_s`` (seconds of audio per second) from the median round, and
the load average of the machine, which matters on a shared 2-core box.

Target (issue 5): >= 1,000 clips/s of 10 s 16 kHz clips from int16 shards on the 2-core CPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from fastspec.data import (
    ClipDataset,
    DemoCorpus,
    build_loader,
    dali_available,
    open_source,
    write_shards,
)

SR = 16000
CLIP_SECONDS = 10.0
NUM_CLIPS = 160  # 5 batches per epoch: timing crosses epochs, so permutations are redrawn
BATCH = 32
BATCHES = 16  # per timed round: 512 clips, 85 minutes of audio
WORKERS = 2
FORMATS = ("wav", "flac", "shards-int16")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The demo corpus as 10 s clips, written once in every format."""
    root = tmp_path_factory.mktemp("bench_data")
    demo = DemoCorpus(num_clips=NUM_CLIPS, clip_seconds=CLIP_SECONDS, sample_rate=SR, seed=0)
    (root / "wav").mkdir()
    (root / "flac").mkdir()
    for i in range(len(demo)):
        wave, _ = demo.load(i)
        sf.write(root / "wav" / f"{i:05d}.wav", wave, SR, subtype="PCM_16")
        sf.write(root / "flac" / f"{i:05d}.flac", wave, SR, subtype="PCM_16")
    write_shards(open_source(root / "wav"), root / "shards-int16", max_count=64)
    return root


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_clips_per_second(benchmark, corpus, loader, fmt):
    if loader == "dali" and not dali_available():
        pytest.skip("NVIDIA DALI is not installed")
    dataset = ClipDataset(open_source(corpus / fmt), SR, CLIP_SECONDS, seed=0)
    stream = build_loader(dataset, BATCH, loader=loader, seed=0, num_workers=WORKERS)
    assert stream.backend == loader
    try:
        for _ in range(2 * WORKERS):  # start the workers / pipeline, fill the prefetch queues
            next(stream)

        def take():
            for _ in range(BATCHES):
                batch = next(stream)
            return batch

        batch = benchmark.pedantic(take, rounds=7, iterations=1, warmup_rounds=1)
    finally:
        stream.close()
    assert batch["wave"].shape == (BATCH, round(CLIP_SECONDS * SR))
    clips_per_s = BATCHES * BATCH / benchmark.stats.stats.median
    benchmark.extra_info.update(
        provider=f"{loader}-{fmt}",
        loader=loader,
        format=fmt,
        clip_seconds=CLIP_SECONDS,
        batch=BATCH,
        workers=WORKERS,
        clips_per_s=clips_per_s,
        audio_s_per_s=clips_per_s * CLIP_SECONDS,
        load_average=list(np.round(os.getloadavg(), 2)),
    )


def test_demo_corpus_generation(benchmark):
    """Generating the default demo corpus (384 clips of 2 s at 16 kHz), as every demo run does
    before its first step: part of the minute ``fastspec pretrain`` promises."""
    import time

    corpus = DemoCorpus()

    def generate():
        for i in range(len(corpus)):
            corpus.load(i)

    cpu0 = time.process_time()
    benchmark.pedantic(generate, rounds=3, iterations=1, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(
        provider="fastspec demo corpus",
        shape=f"{len(corpus)}x{corpus.clip_seconds:g}s",
        clips_per_s=len(corpus) / seconds,
        audio_s_per_s=len(corpus) * corpus.clip_seconds / seconds,
        # CPU seconds per generation (all four timed + warm-up calls), robust to a busy machine
        cpu_s_per_corpus=(time.process_time() - cpu0) / 4,
        loadavg_1min=os.getloadavg()[0],
    )
