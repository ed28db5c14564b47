"""fastspec.data: demo corpus, audio reading, sources and manifests, bad files, clips, loader.

Every audio file is written into tmp_path by the test that uses it.
"""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from fastspec.data import (
    BadAudioError,
    BatchOrder,
    ClipDataset,
    DataError,
    DemoCorpus,
    EpochBatchSampler,
    FileSource,
    collate_clips,
    decode_audio,
    make_loader,
    open_source,
    probe_audio,
    read_audio,
)
from fastspec.frontend.polyphase import resample

SR = 16000


def _tone(seconds: float, sr: int = SR, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write(path, data, sr=SR, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, **kwargs)
    return path


class ArraySource:
    """An in-memory AudioSource; indices in ``bad`` raise BadAudioError like a broken file."""

    def __init__(self, waves, sample_rate=SR, bad=()):
        self.waves, self.sample_rate, self.bad = list(waves), sample_rate, set(bad)
        self.skipped = []

    def __len__(self):
        return len(self.waves)

    def __repr__(self):
        return f"ArraySource({len(self)} clips)"

    def name(self, index):
        return f"clip{index}"

    def load(self, index):
        if index in self.bad:
            raise BadAudioError(self.name(index), "silent: test")
        return self.waves[index], self.sample_rate


# --------------------------------------------------------------------------- demo corpus


def test_demo_corpus_is_deterministic_and_varied():
    a, b = DemoCorpus(num_clips=40, seed=0), DemoCorpus(num_clips=40, seed=0)
    # clip i depends on (seed, i) only: loading order does not matter
    later = b.load(7)[0]
    for i in range(40):
        np.testing.assert_array_equal(a.load(i)[0], b.load(i)[0])
    np.testing.assert_array_equal(a.load(7)[0], later)

    clips = np.stack([a.load(i)[0] for i in range(40)])
    assert clips.dtype == np.float32 and clips.shape == (40, a.clip_samples) == (40, 32000)
    assert np.isfinite(clips).all()
    peaks = np.abs(clips).max(axis=1)
    assert peaks.min() >= 0.1 - 1e-6 and peaks.max() <= 0.9 + 1e-6
    assert len({round(float(p), 4) for p in peaks}) > 30  # random levels, not one level
    # different clips differ, and so does the same clip under another seed
    assert all(not np.array_equal(clips[i], clips[i + 1]) for i in range(39))
    assert not np.array_equal(DemoCorpus(num_clips=40, seed=1).load(0)[0], clips[0])

    # varied content: spectral centroids spread over a wide range of frequencies
    spectra = np.abs(np.fft.rfft(clips, axis=1))
    freqs = np.fft.rfftfreq(clips.shape[1], 1 / SR)
    centroids = (spectra * freqs).sum(axis=1) / spectra.sum(axis=1)
    assert centroids.max() / centroids.min() > 4


# the demo corpus's generation speed is a benchmark (benchmarks/bench_data.py::
# test_demo_corpus_generation), not a timed assertion


def test_open_source_none_gives_demo_corpus_with_options():
    source = open_source(None, demo_options={"num_clips": 10, "clip_seconds": 1.0, "seed": 3})
    assert isinstance(source, DemoCorpus) and len(source) == 10
    wave, sr = source.load(9)
    assert sr == 16000 and wave.shape == (16000,)
    assert source.skipped == [] and source.name(9).endswith("00009")
    with pytest.raises(IndexError):
        source.load(10)


# --------------------------------------------------------------------------- read_audio


def test_read_audio_scaling_mixdown_and_formats(tmp_path):
    tone = _tone(0.5)
    stereo = np.stack([tone, 0.2 * np.ones_like(tone)], axis=1)
    _write(tmp_path / "stereo.wav", stereo, subtype="PCM_16")
    wave, sr = read_audio(tmp_path / "stereo.wav")
    assert sr == SR and wave.dtype == np.float32 and wave.shape == tone.shape
    np.testing.assert_allclose(wave, (tone + 0.2) / 2, atol=2.0**-15)

    # integer PCM is scaled to [-1, 1]: 16384 / 32768 = 0.5
    _write(tmp_path / "int.wav", np.full(800, 16384, dtype=np.int16), subtype="PCM_16")
    np.testing.assert_array_equal(read_audio(tmp_path / "int.wav")[0], 0.5)
    _write(tmp_path / "u8.wav", tone, subtype="PCM_U8")
    np.testing.assert_allclose(read_audio(tmp_path / "u8.wav")[0], tone, atol=1 / 100)

    # a float file peaking above 1 is scaled down by its peak, not clipped
    _write(tmp_path / "loud.wav", 4 * tone, subtype="FLOAT")
    loud = read_audio(tmp_path / "loud.wav")[0]
    np.testing.assert_allclose(loud, tone / 0.5, rtol=1e-5, atol=1e-6)

    for name, options in [("a.flac", {}), ("a.ogg", {"format": "OGG", "subtype": "VORBIS"})]:
        _write(tmp_path / name, tone, sr=22050, **options)
        wave, sr = read_audio(tmp_path / name)
        assert sr == 22050 and wave.dtype == np.float32 and np.abs(wave).max() <= 1.0
    info = probe_audio(tmp_path / "stereo.wav")
    assert (info.frames, info.sample_rate, info.channels) == (8000, SR, 2)


def test_read_audio_rejects_short_files_and_error_pickles(tmp_path):
    path = _write(tmp_path / "short.wav", _tone(0.005))  # 5 ms < the 10 ms default
    with pytest.raises(BadAudioError, match="too short") as excinfo:
        read_audio(path)
    assert str(path) in str(excinfo.value) and excinfo.value.kind == "too short"
    assert read_audio(path, min_seconds=0.001)[0].shape == (80,)
    # DataLoader workers send exceptions back pickled
    clone = pickle.loads(pickle.dumps(excinfo.value))
    assert (clone.path, clone.reason) == (excinfo.value.path, excinfo.value.reason)


# --------------------------------------------------------------------------- sources


def _corpus_folder(root):
    """Mixed formats, channel counts, sample types and rates; plus files that are not audio."""
    tone = _tone(1.0)
    _write(root / "b" / "deep" / "x.WAV", np.stack([tone, -tone / 2], axis=1), subtype="PCM_16")
    _write(root / "a.flac", tone, subtype="PCM_24")
    _write(root / "c" / "y.Ogg", tone, format="OGG", subtype="VORBIS")
    _write(root / "d.wav", _tone(1.0, sr=44100), sr=44100, subtype="FLOAT")
    _write(root / "e.wav", tone, subtype="PCM_U8")
    (root / "notes.txt").write_text("not audio")
    (root / "c" / "z.mp3.bak").write_bytes(b"\x00" * 100)
    return ["a.flac", "b/deep/x.WAV", "c/y.Ogg", "d.wav", "e.wav"]


def test_folder_scan_recursive_mixed_formats(tmp_path):
    expected = _corpus_folder(tmp_path)
    source = open_source(str(tmp_path))
    assert isinstance(source, FileSource)
    assert [source.name(i) for i in range(len(source))] == expected  # sorted, recursive
    assert source.skipped == []
    assert source.sample_rate is None  # 16 kHz and 44.1 kHz files mixed
    waves = {source.name(i): source.load(i) for i in range(len(source))}
    assert waves["d.wav"][1] == 44100
    np.testing.assert_allclose(waves["b/deep/x.WAV"][0], _tone(1.0) / 4, atol=2.0**-15)

    # every file, including the 44.1 kHz one, comes out as a 1 s clip at 16 kHz
    dataset = ClipDataset(source, SR, 1.0)
    for i in range(len(source)):
        item = dataset[(0, i)]
        assert item["wave"].shape == (SR,) and item["length"] == SR and item["index"] == i
    # the resampled file is the 44.1 kHz tone at 16 kHz (equal to resampling it directly)
    index = expected.index("d.wav")
    np.testing.assert_allclose(
        dataset[index]["wave"].numpy(), resample(waves["d.wav"][0], 44100, SR), atol=1e-6
    )


def test_large_folder_probed_in_order_and_symlink_cycles_end(tmp_path):
    # enough files for the threaded probe; the result must still follow the sorted order
    for i in range(80):
        data = np.zeros(0, np.float32) if i % 9 == 4 else _tone(0.02, freq=300.0 + i)
        _write(tmp_path / f"part{i % 3}" / f"f{i:03d}.wav", data)
    (tmp_path / "part0" / "loop").symlink_to(tmp_path, target_is_directory=True)
    source = open_source(tmp_path)
    expected = sorted(f"part{i % 3}/f{i:03d}.wav" for i in range(80) if i % 9 != 4)
    assert [source.name(i) for i in range(len(source))] == expected
    assert sorted(name for name, _ in source.skipped) == sorted(
        f"part{i % 3}/f{i:03d}.wav" for i in range(80) if i % 9 == 4
    )


def test_csv_manifest(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _write(data / "one.wav", _tone(0.5))
    _write(data / "sub" / "two.flac", _tone(0.5, freq=880))
    absolute = _write(tmp_path / "elsewhere" / "three.wav", _tone(0.5, freq=220))
    manifest = data / "train.csv"
    manifest.write_text(
        "label,path,duration\n"
        "x,one.wav,0.5\n"
        "y,sub/two.flac,0.5\n"
        f"z,{absolute},0.5\n"
        "w,gone.wav,0.5\n"
    )
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the manifest, not the cwd
    source = open_source(str(manifest))
    assert [source.name(i) for i in range(len(source))] == [
        "one.wav",
        "sub/two.flac",
        str(absolute),
    ]
    assert [(name, reason.split(":")[0]) for name, reason in source.skipped] == [
        ("gone.wav", "missing")
    ]
    np.testing.assert_allclose(source.load(1)[0], _tone(0.5, freq=880), atol=2.0**-15)


def test_jsonl_manifest(tmp_path):
    _write(tmp_path / "clips" / "one.wav", _tone(0.5))
    _write(tmp_path / "clips" / "two.ogg", _tone(0.5), format="OGG", subtype="VORBIS")
    lines = [
        {"path": "clips/one.wav", "label": 1},
        {"path": "clips/missing.flac"},
        "{not json",
        {"label": 3},
        {"path": "clips/two.ogg"},
    ]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n\n"
    )
    source = open_source(manifest)
    assert [source.name(i) for i in range(len(source))] == ["clips/one.wav", "clips/two.ogg"]
    reasons = dict(source.skipped)
    assert len(source.skipped) == 3
    assert reasons["clips/missing.flac"].startswith("missing")
    assert reasons["train.jsonl:3"].startswith("unreadable: invalid JSON")
    assert reasons["train.jsonl:4"].startswith("missing: no 'path'")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("nopath.csv", "file,label\na.wav,1\n", "no 'path' column"),
        ("noheader.csv", "a.wav\nb.wav\n", "no 'path' column"),
        ("nopath.jsonl", '{"file": "a.wav"}\n', "no object with a 'path' key"),
        ("list.txt", "a.wav\n", "expected a folder"),
    ],
)
def test_bad_specs_raise_data_error_naming_them(tmp_path, name, content, message):
    spec = tmp_path / name
    spec.write_text(content)
    with pytest.raises(DataError, match=message) as excinfo:
        open_source(spec)
    assert str(spec) in str(excinfo.value)


def test_missing_and_empty_specs(tmp_path):
    with pytest.raises(DataError, match="does not exist") as excinfo:
        open_source(tmp_path / "nowhere")
    assert "nowhere" in str(excinfo.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no audio here")
    with pytest.raises(DataError, match="no audio files") as excinfo:
        open_source(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(excinfo.value)


# --------------------------------------------------------------------------- bad files


def _bad_files(root):
    """One file of each bad kind, with the reason kind it must be skipped for.

    Returns ``(header_bad, decode_bad)``: files the header probe rejects at open time, and files
    only decoding exposes (rejected at open time with verify=True, else while loading).
    """
    rng = np.random.default_rng(0)
    (root / "b_corrupt.flac").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (root / "b_empty.wav").write_bytes(b"")
    _write(root / "b_header_only.wav", np.zeros(0, np.float32))
    full = _write(root / "full.wav", _tone(1.0)).read_bytes()
    (root / "b_truncated.wav").write_bytes(full[: len(full) // 2])
    (root / "full.wav").unlink()
    (root / "b_text.wav").write_text("RIFF? no, just text pretending to be a wave file\n" * 20)
    header_bad = {
        "b_corrupt.flac": "unreadable",
        "b_empty.wav": "empty",
        "b_header_only.wav": "empty",
        "b_text.wav": "unreadable",
        "b_truncated.wav": "truncated",
    }

    noise = (0.3 * rng.standard_normal(SR)).astype(np.float32)  # incompressible: long FLAC
    flac = _write(root / "full.flac", noise).read_bytes()
    (root / "c_truncated.flac").write_bytes(flac[: len(flac) // 2])
    (root / "full.flac").unlink()
    with_nan = _tone(0.5)
    with_nan[100] = np.nan
    _write(root / "c_nan.wav", with_nan, subtype="FLOAT")
    _write(root / "c_silent.wav", np.zeros(SR // 2, np.float32), subtype="PCM_16")
    decode_bad = {
        "c_truncated.flac": "decode error",
        "c_nan.wav": "non-finite",
        "c_silent.wav": "silent",
    }
    return header_bad, decode_bad


def test_bad_files_are_skipped_with_reasons_and_counted(tmp_path):
    header_bad, decode_bad = _bad_files(tmp_path)
    _write(tmp_path / "a_good.wav", _tone(1.0))  # sorts first: the open-time decode check
    _write(tmp_path / "d_good.flac", _tone(1.0, freq=660))  # passes on it immediately

    source = open_source(tmp_path)
    kinds = {name: reason.split(":")[0] for name, reason in source.skipped}
    assert kinds == header_bad  # each header-level bad file once, with its reason
    names = [source.name(i) for i in range(len(source))]
    assert names == ["a_good.wav", *sorted(decode_bad), "d_good.flac"]

    # decode-level failures surface while filling batches: replaced by the next clip, reported
    dataset = ClipDataset(source, SR, 0.5)
    item = dataset[(0, names.index("c_nan.wav"))]
    # nan -> silent -> truncated flac -> d_good.flac, each failure reported in order
    assert item["index"] == names.index("d_good.flac")
    assert [(n, r.split(":")[0]) for n, r in item["skipped"]] == [
        ("c_nan.wav", "non-finite"),
        ("c_silent.wav", "silent"),
        ("c_truncated.flac", "decode error"),
    ]
    with make_loader(dataset, BatchOrder(batch_size=len(names), seed=0)) as batches:
        batch = next(batches)
    skipped = {name: reason.split(":")[0] for name, reason in batch["skipped"]}
    assert skipped == decode_bad
    assert batches.skipped_total == len(batch["skipped"]) and batches.skipped_files == set(skipped)
    assert set(batch["index"].tolist()) <= {0, len(names) - 1}  # only good files are used

    # verify=True decodes everything at open time: all bad files are skipped up front
    verified = open_source(tmp_path, verify=True)
    assert [verified.name(i) for i in range(len(verified))] == ["a_good.wav", "d_good.flac"]
    assert dict((n, r.split(":")[0]) for n, r in verified.skipped) == header_bad | decode_bad


@pytest.mark.parametrize("which", ["all", "decode_only"])
def test_all_bad_source_fails_at_open(tmp_path, which):
    header_bad, decode_bad = _bad_files(tmp_path)
    if which == "decode_only":  # headers look fine; only decoding shows every file is bad
        for name in header_bad:
            (tmp_path / name).unlink()
    with pytest.raises(DataError, match="no usable audio") as excinfo:
        open_source(tmp_path)
    message = str(excinfo.value)
    assert str(tmp_path) in message
    expected = decode_bad if which == "decode_only" else header_bad | decode_bad
    assert f"all {len(expected)} files were skipped" in message
    for kind in set(expected.values()):
        assert kind in message


def test_too_many_consecutive_failures_raise(tmp_path):
    waves = [_tone(0.5)] * 40
    dataset = ClipDataset(ArraySource(waves, bad=range(1, 40)), SR, 0.5)
    assert dataset[0]["index"] == 0
    with pytest.raises(DataError, match="32 consecutive clips of ArraySource"):
        dataset[1]
    # fewer clips than the bound: every clip is tried once, then it gives up
    small = ClipDataset(ArraySource(waves[:3], bad=range(3)), SR, 0.5)
    with pytest.raises(DataError, match="3 consecutive"):
        small[(2, 1)]


def test_skipped_files_are_logged_once(tmp_path):
    waves = [_tone(0.5, freq=200 + 50 * i) for i in range(8)]
    dataset = ClipDataset(ArraySource(waves, bad={3}), SR, 0.5)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("fastspec")
    logger.addHandler(handler)
    try:
        with make_loader(dataset, BatchOrder(batch_size=8, seed=0)) as batches:
            for _ in range(3):  # three epochs, clip3 fails in each
                assert [n for n, _ in next(batches)["skipped"]] == ["clip3"]
    finally:
        logger.removeHandler(handler)
    assert batches.skipped_total == 3 and batches.skipped_files == {"clip3"}
    assert [r.getMessage() for r in records if "clip3" in r.getMessage()] == [
        "skipping clip3: silent: test (replaced by the next clip)"
    ]


# --------------------------------------------------------------------------- clips


def test_crop_and_pad(tmp_path):
    clip_samples = 1600
    short, exact, long = _tone(0.05), _tone(0.1), _tone(0.7, freq=123.0)
    long = long * np.linspace(0.1, 1.0, long.size, dtype=np.float32)  # every offset distinct
    source = ArraySource([short, exact, long])
    dataset = ClipDataset(source, SR, 0.1, seed=5)
    assert dataset.clip_samples == clip_samples

    item = dataset[(0, 0)]  # shorter: zero-padded, length counts the valid samples
    assert item["wave"].shape == (clip_samples,) and item["length"] == short.size == 800
    np.testing.assert_array_equal(item["wave"][:800].numpy(), short)
    assert not item["wave"][800:].any()
    np.testing.assert_array_equal(dataset[(0, 1)]["wave"].numpy(), exact)

    def offset(wave):
        starts = [s for s in range(long.size - clip_samples + 1) if wave[0] == long[s]]
        matches = [s for s in starts if np.array_equal(wave, long[s : s + clip_samples])]
        assert len(matches) == 1
        return matches[0]

    offsets = [offset(dataset[(epoch, 2)]["wave"].numpy()) for epoch in range(6)]
    assert len(set(offsets)) > 1  # a new crop every epoch...
    assert offsets == [
        offset(dataset[(epoch, 2)]["wave"].numpy()) for epoch in range(6)
    ]  # ...fixed
    assert offset(ClipDataset(source, SR, 0.1, seed=6)[(0, 2)]["wave"].numpy()) != offsets[0] or (
        offset(ClipDataset(source, SR, 0.1, seed=6)[(1, 2)]["wave"].numpy()) != offsets[1]
    )
    start = ClipDataset(source, SR, 0.1, random_crop=False)[(3, 2)]["wave"].numpy()
    np.testing.assert_array_equal(start, long[:clip_samples])


def test_crop_of_resampled_clip_is_a_window_of_the_full_resample():
    rng = np.random.default_rng(0)
    wave = (0.3 * rng.standard_normal(44100)).astype(np.float32)  # 1 s at 44.1 kHz
    full = resample(wave, 44100, SR)
    dataset = ClipDataset(ArraySource([wave, wave[:2205]], sample_rate=44100), SR, 0.25, seed=1)
    windows = np.lib.stride_tricks.sliding_window_view(full, 4000)
    offsets = []
    for epoch in range(4):
        errors = np.abs(windows - dataset[(epoch, 0)]["wave"].numpy()).max(axis=1)
        assert errors.min() < 1e-6  # equals the full resample at some offset...
        offsets.append(int(errors.argmin()))
    assert len(set(offsets)) > 1  # ...and a random one
    item = dataset[(0, 1)]  # 50 ms at 44.1 kHz -> 800 samples at 16 kHz, then zero padding
    assert item["length"] == 800 and not item["wave"][800:].any()
    np.testing.assert_allclose(
        item["wave"][:800].numpy(), resample(wave[:2205], 44100, SR), atol=1e-6
    )


def test_resampled_full_scale_clip_stays_in_range():
    # a full-scale square wave overshoots by ~9 % through any band-limiting filter (Gibbs);
    # the batch contract still promises [-1, 1]
    square = np.sign(np.sin(2 * np.pi * 100 * np.arange(22050) / 22050)).astype(np.float32)
    assert np.abs(resample(square, 22050, SR)).max() > 1.05
    wave = ClipDataset(ArraySource([square], sample_rate=22050), SR, 0.5)[0]["wave"]
    assert wave.abs().max() <= 1.0


def test_collate_batch_contract():
    source = ArraySource([_tone(0.05), _tone(0.2), _tone(0.1)], bad={1})
    dataset = ClipDataset(source, SR, 0.1)
    batch = collate_clips([dataset[(0, i)] for i in range(3)])
    assert set(batch) == {"wave", "lengths", "index", "skipped"}
    assert batch["wave"].dtype == torch.float32 and batch["wave"].shape == (3, 1600)
    assert batch["lengths"].dtype == torch.int64 and batch["lengths"].tolist() == [800, 1600, 1600]
    assert batch["index"].dtype == torch.int64 and batch["index"].tolist() == [0, 2, 2]
    assert batch["skipped"] == [("clip1", "silent: test")]


# --------------------------------------------------------------------------- loader


def test_sampler_epochs_are_permutations_and_resume_skips_without_generating(monkeypatch):
    sampler = EpochBatchSampler(10, BatchOrder(batch_size=3, seed=7))
    assert sampler.batches_per_epoch == 3  # drop_last: one item per epoch is left out
    stream = iter(sampler)
    batches = [next(stream) for _ in range(9)]
    for epoch in range(3):
        keys = [key for batch in batches[3 * epoch : 3 * epoch + 3] for key in batch]
        assert {e for e, _ in keys} == {epoch}
        indices = [i for _, i in keys]
        assert len(indices) == len(set(indices)) == 9 and set(indices) <= set(range(10))
        assert indices == sampler.permutation(epoch)[:9]
    assert sampler.permutation(0) != sampler.permutation(1)
    assert EpochBatchSampler(10, BatchOrder(3, seed=8)).permutation(0) != sampler.permutation(0)

    resumed = iter(EpochBatchSampler(10, BatchOrder(3, seed=7, start_batch=4)))
    assert [next(resumed) for _ in range(5)] == batches[4:9]

    drawn = []
    original = EpochBatchSampler.permutation
    monkeypatch.setattr(
        EpochBatchSampler, "permutation", lambda self, e: drawn.append(e) or original(self, e)
    )
    far = iter(EpochBatchSampler(10, BatchOrder(3, seed=7, start_batch=3_000_001)))
    assert next(far)[0][0] == 1_000_000 and drawn == [1_000_000]  # earlier epochs never drawn

    with pytest.raises(DataError, match="larger than the 10 clips"):
        EpochBatchSampler(10, BatchOrder(11, seed=0))


def _take(source, clip_seconds, batches, start_batch=0, **loader_options):
    dataset = ClipDataset(source, SR, clip_seconds, seed=11)
    order = BatchOrder(batch_size=4, seed=3, start_batch=start_batch)
    with make_loader(dataset, order, **loader_options) as stream:
        return [next(stream) for _ in range(batches)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["wave"], y["wave"], rtol=0, atol=0)
        assert torch.equal(x["lengths"], y["lengths"]) and torch.equal(x["index"], y["index"])
        assert x["skipped"] == y["skipped"]


def test_loader_batches_identical_across_worker_counts_and_resume(tmp_path):
    # a file corpus with resampling, padding and a file that fails only when decoded
    for i in range(9):
        freq, seconds = 200.0 + 100 * i, 0.2 + 0.1 * i
        rate = 44100 if i % 3 == 0 else SR
        _write(tmp_path / f"clip{i}.wav", _tone(seconds, sr=rate, freq=freq), sr=rate)
    _write(tmp_path / "clip4.wav", np.zeros(SR // 2, np.float32), subtype="PCM_16")  # silent
    source = open_source(tmp_path)
    assert len(source) == 9  # the silent file passes the header probe

    serial = _take(source, 0.5, batches=7)  # 2 batches per epoch: crosses 3 epoch boundaries
    assert serial[0]["wave"].shape == (4, 8000)
    assert any(b["skipped"] for b in serial)
    assert any((b["lengths"] < 8000).any() for b in serial)
    _assert_same_batches(serial, _take(source, 0.5, batches=7, num_workers=2))
    # resume at global batch 3 (mid-epoch 1), with workers: exactly batches 3..6 again
    _assert_same_batches(serial[3:], _take(source, 0.5, batches=4, start_batch=3, num_workers=2))


def test_loader_on_demo_corpus_contract_and_resume():
    demo = DemoCorpus(num_clips=12, clip_seconds=0.5)
    serial = _take(demo, 0.25, batches=8)  # 3 batches per epoch
    for batch in serial:
        wave = batch["wave"]
        assert wave.dtype == torch.float32 and wave.shape == (4, 4000)
        assert wave.abs().max() <= 1.0 and batch["lengths"].tolist() == [4000] * 4
        assert batch["index"].dtype == torch.int64 and batch["skipped"] == []
    # random crops: the same clip in two epochs is cropped differently
    first = {int(i): w for i, w in zip(serial[0]["index"], serial[0]["wave"])}
    again = {int(i): w for b in serial[3:6] for i, w in zip(b["index"], b["wave"])}
    common = set(first) & set(again)
    assert common and any(not torch.equal(first[i], again[i]) for i in common)
    _assert_same_batches(serial[5:], _take(demo, 0.25, batches=3, start_batch=5))


def test_data_package_does_not_import_higher_layers():
    code = (
        "import sys, fastspec.data\n"
        "higher = ('fastspec.models', 'fastspec.recipes', 'fastspec.train', 'fastspec.cli')\n"
        "print([m for m in sys.modules if m.startswith(higher)])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- issue 5 additions


def test_ranks_split_each_global_batch():
    samplers = [
        EpochBatchSampler(20, BatchOrder(3, seed=1, rank=r, world_size=3)) for r in range(3)
    ]
    assert samplers[0].batches_per_epoch == 2  # 20 // (3 x 3): all ranks step alike
    streams = [iter(s) for s in samplers]
    single = EpochBatchSampler(20, BatchOrder(3, seed=1))
    for batch in range(4):  # two epochs
        keys = [next(stream) for stream in streams]
        flat = [key for rank_keys in keys for key in rank_keys]
        assert len(set(flat)) == 9  # disjoint across ranks
        epoch = batch // 2
        order = single.permutation(epoch)
        assert flat == [(epoch, i) for i in order[(batch % 2) * 9 : (batch % 2) * 9 + 9]]
    fresh = iter(EpochBatchSampler(20, BatchOrder(3, seed=1, rank=2, world_size=3)))
    fourth = [next(fresh) for _ in range(4)][3]
    resumed = EpochBatchSampler(20, BatchOrder(3, seed=1, start_batch=3, rank=2, world_size=3))
    assert next(iter(resumed)) == fourth
    with pytest.raises(ValueError, match="rank"):
        BatchOrder(3, seed=1, rank=3, world_size=3)
    with pytest.raises(ValueError, match="seed and start_batch"):
        BatchOrder(3, seed=1, start_batch=-1)
    with pytest.raises(DataError, match="3 x 8 ranks"):
        EpochBatchSampler(20, BatchOrder(3, seed=1, world_size=8))


def _wav_bytes(data, sr=SR, subtype="PCM_16", fmt="WAV"):
    import io

    buffer = io.BytesIO()
    sf.write(buffer, data, sr, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_decode_audio_equals_soundfile_bit_for_bit(tmp_path, channels):
    rng = np.random.default_rng(channels)
    # int16 samples, so that the WAV and FLAC writers store the same values
    data = np.clip(rng.normal(0, 8000, (3001, channels)), -32768, 32767).astype(np.int16)
    payload = _wav_bytes(data)  # the numpy fast path (16-bit PCM)
    path = tmp_path / "x.wav"
    path.write_bytes(payload)
    reference = sf.read(path, dtype="float32", always_2d=True)[0]
    # the mixdown is sum_c x_c * (1 / C) in channel order (DALI's formula); the mean for C <= 2
    expected = reference[:, 0] * np.float32(1 / channels)
    for c in range(1, channels):
        expected += reference[:, c] * np.float32(1 / channels)
    wave, rate = decode_audio(payload, "x.wav")
    assert rate == SR and wave.dtype == np.float32
    np.testing.assert_array_equal(wave, expected)
    np.testing.assert_array_equal(read_audio(path)[0], expected)
    if channels <= 2:
        np.testing.assert_array_equal(wave, reference.mean(axis=1, dtype=np.float32))
    # a segment is the slice of the whole
    np.testing.assert_array_equal(
        decode_audio(payload, "x", start=100, frames=50)[0], wave[100:150]
    )
    # other encodings go through libsndfile and give the same values
    flac = decode_audio(_wav_bytes(data, subtype="PCM_16", fmt="FLAC"), "x.flac")[0]
    np.testing.assert_array_equal(flac, expected)


def test_decode_audio_rejects_bad_bytes():
    good = _wav_bytes((0.3 * np.ones(1000)).astype(np.float32))
    with pytest.raises(BadAudioError, match="truncated: data chunk"):
        decode_audio(good[:-200], "cut.wav")
    with pytest.raises(BadAudioError, match="unreadable"):
        decode_audio(b"\x00" * 500, "zeros.wav")
    with pytest.raises(BadAudioError, match="empty"):
        decode_audio(b"", "nothing.wav")
    with pytest.raises(BadAudioError, match="silent"):
        decode_audio(_wav_bytes(np.zeros(1000, np.float32)), "silent.wav")
    with pytest.raises(BadAudioError, match="too short: segment starts at frame 2000"):
        decode_audio(good, "x.wav", start=2000)


def test_torch_is_chosen_without_dali_and_dali_is_then_an_error(monkeypatch, tmp_path):
    import logging

    import fastspec._logging as fastspec_logging
    import fastspec.data.dali as dali_module
    from fastspec.data import build_loader, resolve_loader

    monkeypatch.setattr(dali_module, "dali_available", lambda: False)
    monkeypatch.setattr(dali_module, "dali_version", lambda: None)
    monkeypatch.setattr(fastspec_logging, "_seen", {})
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("fastspec").addHandler(handler)
    for i in range(2):
        _write(tmp_path / f"{i}.wav", _tone(0.5, freq=300.0 + 100 * i))
    dataset = ClipDataset(open_source(tmp_path), SR, 0.5)
    try:
        with build_loader(dataset, 2, seed=0, num_workers=0) as stream:
            assert stream.backend == "torch" and next(stream)["wave"].shape == (2, 8000)
    finally:
        logging.getLogger("fastspec").removeHandler(handler)
    lines = [r.getMessage() for r in records if r.getMessage().startswith("data loader")]
    assert lines == [
        "data loader: torch (soundfile in DataLoader workers); DALI is not installed "
        "(pip install nvidia-dali-cuda130)"
    ]
    with pytest.raises(DataError, match="DALI is not installed"):
        resolve_loader("dali", dataset.source)
    with pytest.raises(ValueError, match="unknown data loader backend .fast.; choose one of"):
        resolve_loader("fast", dataset.source)
    # the environment variable wins over the argument, as for the front end
    monkeypatch.setenv("FASTSPEC_LOADER", "torch")
    assert resolve_loader("dali", dataset.source) == "torch"
    monkeypatch.setenv("FASTSPEC_LOADER", "dali")
    with pytest.raises(DataError, match="DALI is not installed"):
        resolve_loader("torch", dataset.source)
    from fastspec.train.config import ConfigError, DataConfig

    with pytest.raises(ConfigError, match="data.loader='dali'"):
        DataConfig(loader="dali")
    with pytest.raises(ConfigError, match="must be auto, dali or torch"):
        DataConfig(loader="fast")


def test_loader_flag_reaches_the_config():
    import argparse

    from fastspec.cli import _pretrain_parser, build_config

    parser = argparse.ArgumentParser()
    _pretrain_parser(parser.add_subparsers())
    cfg = build_config(parser.parse_args(["pretrain", "--loader", "torch"]))
    assert cfg.data.loader == "torch"
    assert build_config(parser.parse_args(["pretrain"])).data.loader == "auto"
