"""The DALI loader against the torch loader: the same batches for the same files and seed.

"Same" is bitwise (torch.equal) for WAV and FLAC at any bit depth, rate and channel count,
including rows that are resampled (DALI delivers the input under the crop and the shared
resampler runs on it), scaled (float files above full scale) or replaced (bad files); OGG Vorbis
within 1e-6, because DALI ships another libvorbis build (see fastspec/data/dali.py).

The whole module needs NVIDIA DALI (``pip install nvidia-dali-cuda130``); the pipeline runs on
the CPU (``device_id=None``), so no GPU is needed. Every file is written into tmp_path.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from fastspec.data import (
    BatchOrder,
    ClipDataset,
    DaliLoader,
    DataError,
    DemoCorpus,
    build_loader,
    dali_available,
    make_loader,
    open_source,
    write_shards,
)

pytestmark = pytest.mark.skipif(
    not dali_available(), reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)"
)

SR = 16000


def _noise(rng, seconds, sr, amp=0.3, channels=1):
    shape = (round(seconds * sr), channels) if channels > 1 else (round(seconds * sr),)
    return (amp * rng.standard_normal(shape)).astype(np.float32)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Files of every kind both loaders must agree on, plus files only decoding shows are bad."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    sf.write(root / "a16.wav", _noise(rng, 1.3, SR), SR, subtype="PCM_16")
    sf.write(root / "b24_stereo.flac", _noise(rng, 0.7, SR, channels=2), SR, subtype="PCM_24")
    sf.write(root / "c_loud44k.wav", _noise(rng, 1.1, 44100, amp=1.5), 44100, subtype="FLOAT")
    three = _noise(rng, 2.0, 22050, channels=3)
    sf.write(root / "d_3ch22k.wav", three, 22050, subtype="PCM_16")
    sf.write(root / "e_u8_48k.wav", _noise(rng, 0.3, 48000), 48000, subtype="PCM_U8")
    with_nan = _noise(rng, 1.0, SR)
    with_nan[50] = np.nan
    sf.write(root / "f_nan.wav", with_nan, SR, subtype="FLOAT")
    sf.write(root / "g_silent.wav", np.zeros(SR // 2, np.float32), SR, subtype="PCM_16")
    sf.write(root / "h32k.flac", _noise(rng, 3.0, 32000), 32000)
    flac = (root / "h32k.flac").read_bytes()
    (root / "i_truncated.flac").write_bytes(flac[: len(flac) // 2])  # DALI's decoder fails on it
    sf.write(root / "j_short.wav", _noise(rng, 0.05, SR), SR)
    sf.write(root / "k8k.flac", _noise(rng, 1.6, 8000), 8000)
    sf.write(root / "l_loud16k.wav", _noise(rng, 1.2, SR, amp=2.0), SR, subtype="FLOAT")
    with_inf = _noise(rng, 0.8, 22050, channels=2)
    with_inf[100, 1] = np.inf
    sf.write(root / "m_inf.wav", with_inf, 22050, subtype="FLOAT")
    return root


def _take(loader, batches):
    with loader:
        return [next(loader) for _ in range(batches)]


def _assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y) == {"wave", "lengths", "index", "skipped"}
        assert x["wave"].dtype == y["wave"].dtype == torch.float32
        assert torch.equal(x["wave"], y["wave"]), (x["wave"] - y["wave"]).abs().max()
        assert y["lengths"].dtype == y["index"].dtype == torch.int64
        assert torch.equal(x["lengths"], y["lengths"]) and torch.equal(x["index"], y["index"])
        assert x["skipped"] == y["skipped"]


def test_dali_batches_equal_torch_batches_bit_for_bit(mixed_folder):
    source = open_source(mixed_folder)
    dataset = ClipDataset(source, SR, 1.0, seed=3)
    # 3 batches per epoch: 8 batches cross two epoch boundaries, so every file is cropped
    # at new offsets and each bad file comes up more than once
    torch_batches = _take(make_loader(dataset, BatchOrder(4, seed=5)), 8)
    dali = DaliLoader(dataset, BatchOrder(4, seed=5), num_threads=2)
    dali_batches = _take(dali, 8)
    _assert_identical(torch_batches, dali_batches)
    # the truncated FLAC stopped a DALI pipeline: it was rebuilt, and the file is remembered
    # (with any other bad file sampled into that batch: DALI does not say which one failed)
    bad = {"f_nan.wav", "g_silent.wav", "i_truncated.flac", "m_inf.wav"}
    remembered = {source.name(i) for i in dali._host_decode}
    assert "i_truncated.flac" in remembered and remembered <= bad
    assert dali.skipped_files == bad

    # the comparison covers what it claims: resampled rows, padding, replaced bad files
    names = {source.name(int(i)) for b in dali_batches for i in b["index"]}
    assert {"c_loud44k.wav", "d_3ch22k.wav", "e_u8_48k.wav", "k8k.flac"} <= names
    assert any((b["lengths"] < SR).any() for b in dali_batches)
    skipped = {name for b in dali_batches for name, _ in b["skipped"]}
    assert skipped == {"f_nan.wav", "g_silent.wav", "i_truncated.flac", "m_inf.wav"}
    assert all(b["wave"].abs().max() <= 1.0 for b in dali_batches)


def test_dali_order_independent_of_threads_and_resumable(mixed_folder):
    dataset = ClipDataset(open_source(mixed_folder), SR, 0.5, seed=1)
    full = _take(DaliLoader(dataset, BatchOrder(3, seed=2), num_threads=1), 6)
    _assert_identical(
        full, _take(DaliLoader(dataset, BatchOrder(3, seed=2), num_threads=2, prefetch=3), 6)
    )
    # resumed at global batch 4 (mid-epoch 1): exactly batches 4 and 5 again
    _assert_identical(full[4:], _take(DaliLoader(dataset, BatchOrder(3, seed=2, start_batch=4)), 2))
    # and equal to the torch loader's resumed stream with worker processes
    _assert_identical(
        full[4:], _take(make_loader(dataset, BatchOrder(3, seed=2, start_batch=4)), 2)
    )


def test_dali_ranks_take_the_same_shares_as_torch(mixed_folder):
    # which keys each rank gets is EpochBatchSampler's job (tests/test_data.py); here both
    # loaders must fill them alike
    dataset = ClipDataset(open_source(mixed_folder), SR, 0.5, seed=1)
    for rank in range(2):
        _assert_identical(
            _take(DaliLoader(dataset, BatchOrder(2, seed=4, rank=rank, world_size=2)), 2),
            _take(make_loader(dataset, BatchOrder(2, seed=4, rank=rank, world_size=2)), 2),
        )


@pytest.mark.parametrize("fmt", ["int16", "flac"])
def test_dali_equals_torch_on_shards(mixed_folder, tmp_path, fmt):
    stats = write_shards(open_source(mixed_folder), tmp_path, fmt=fmt, max_count=4)
    assert len(stats.shards) == 3 and stats.clips == 9  # 13 files, 4 bad ones left out
    dataset = ClipDataset(open_source(tmp_path), SR, 1.0, seed=7)
    _assert_identical(
        _take(make_loader(dataset, BatchOrder(3, seed=0), num_workers=2), 4),
        _take(DaliLoader(dataset, BatchOrder(3, seed=0)), 4),
    )


def test_dali_segments_from_a_manifest(tmp_path):
    rng = np.random.default_rng(1)
    sf.write(tmp_path / "long.flac", _noise(rng, 3.0, SR), SR)
    sf.write(tmp_path / "long44k.wav", _noise(rng, 3.0, 44100), 44100, subtype="PCM_16")
    (tmp_path / "m.csv").write_text(
        "path,offset,duration\nlong.flac,0.5,1.2\nlong.flac,2.5,\nlong44k.wav,1.0,1.5\n"
        "long.flac,,0.4\n"
    )
    dataset = ClipDataset(open_source(tmp_path / "m.csv"), SR, 1.0, seed=2)
    torch_batches = _take(make_loader(dataset, BatchOrder(2, seed=1)), 4)
    _assert_identical(torch_batches, _take(DaliLoader(dataset, BatchOrder(2, seed=1)), 4))
    assert sorted({int(n) for b in torch_batches for n in b["lengths"]}) == [6400, 8000, 16000]


def test_dali_ogg_agrees_to_float_rounding(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(4):
        sf.write(tmp_path / f"{i}.ogg", _noise(rng, 1.5, 22050), 22050, format="OGG")
    dataset = ClipDataset(open_source(tmp_path), SR, 1.0, seed=0)
    for x, y in zip(
        _take(make_loader(dataset, BatchOrder(2, seed=0)), 3),
        _take(DaliLoader(dataset, BatchOrder(2, seed=0)), 3),
    ):
        torch.testing.assert_close(x["wave"], y["wave"], rtol=0, atol=1e-6)
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["lengths"], y["lengths"])


def test_auto_takes_dali_for_files_and_says_so(mixed_folder, monkeypatch):
    import fastspec._logging as fastspec_logging

    monkeypatch.setattr(fastspec_logging, "_seen", {})
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("fastspec").addHandler(handler)
    try:
        dataset = ClipDataset(open_source(mixed_folder), SR, 0.5)
        with build_loader(dataset, 2, seed=0, num_workers=1) as stream:
            assert stream.backend == "dali" and next(stream)["wave"].shape == (2, 8000)
        demo = ClipDataset(DemoCorpus(num_clips=8, clip_seconds=0.5), SR, 0.5)
        monkeypatch.setattr(fastspec_logging, "_seen", {})
        with build_loader(demo, 2, seed=0, num_workers=0) as stream:
            assert stream.backend == "torch"
    finally:
        logging.getLogger("fastspec").removeHandler(handler)
    lines = [r.getMessage() for r in records if r.getMessage().startswith("data loader")]
    assert lines[0].startswith("data loader: DALI ") and "installed" in lines[0]
    assert "demo corpus" in lines[1] and len(lines) == 2
    with pytest.raises(DataError, match="generated in memory"):
        build_loader(demo, 2, seed=0, loader="dali")


def test_pretrain_with_dali_equals_pretrain_with_torch(tmp_path):
    """End to end: the same files, seed and steps give the same weights with either loader."""
    from fastspec.train import apply_override, default_config, pretrain
    from fastspec.train.checkpoint import list_checkpoints, load_checkpoint

    rng = np.random.default_rng(3)
    for i in range(6):
        rate = 22050 if i % 2 else SR  # half of the clips are resampled
        sf.write(tmp_path / f"{i}.flac", _noise(rng, 1.2, rate), rate)
    finals = []
    for loader in ("torch", "dali"):
        cfg = default_config(demo=True)
        for assignment in (
            f"out={tmp_path / loader}",
            f"data.source={tmp_path}",
            f"data.loader={loader}",
            "data.clip_seconds=1.0",
            "data.num_workers=1",
            "frontend.n_mels=64",
            "model.decoder_dim=64",
            "model.decoder_depth=1",
            "model.decoder_heads=4",
            "train.batch_size=2",
            "train.steps=3",
            "train.ckpt_every=3",
            "train.progress=false",
            "train.amp=none",
        ):
            apply_override(cfg, assignment)
        pretrain(cfg)
        _, path = list_checkpoints(tmp_path / loader)[-1]
        finals.append(load_checkpoint(path)["model"])
    for key, value in finals[0].items():
        assert torch.equal(value, finals[1][key]), key
