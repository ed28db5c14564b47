"""WebDataset tar shards: ``fastspec shard`` / write_shards, ShardSource, and broken shards.

Every file and shard is written into tmp_path by the test that uses it.
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch

from fastspec.cli import main
from fastspec.data import (
    BatchOrder,
    ClipDataset,
    DataError,
    ShardSource,
    expand_shard_pattern,
    make_loader,
    open_source,
    write_shards,
)
from fastspec.frontend.polyphase import resample

SR = 16000
LSB = 2.0**-15  # one 16-bit step


def _noise(seed, seconds, sr=SR, amp=0.3, channels=1):
    rng = np.random.default_rng(seed)
    shape = (round(seconds * sr), channels) if channels > 1 else (round(seconds * sr),)
    return (amp * rng.standard_normal(shape)).astype(np.float32)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "a.wav", _noise(0, 0.5), SR, subtype="PCM_16")
    sf.write(root / "sub" / "b.flac", _noise(1, 0.4, channels=2), SR, subtype="PCM_24")
    sf.write(root / "c.wav", _noise(2, 0.3, sr=22050, amp=2.0), 22050, subtype="FLOAT")
    sf.write(root / "d.wav", np.zeros(SR // 4, np.float32), SR, subtype="PCM_16")  # silent
    (root / "e.wav").write_bytes(b"RIFF not a wav")
    return root


def test_write_shards_round_trip(folder, tmp_path):
    source = open_source(folder)
    stats = write_shards(source, tmp_path / "out", max_count=2)
    assert [p.rsplit("/", 1)[1] for p in stats.shards] == ["shard-000000.tar", "shard-000001.tar"]
    assert stats.clips == 3 and stats.seconds == pytest.approx(0.5 + 0.4 + 0.3)
    # the header-level bad file was skipped when opening, the silent one while writing
    assert {name: reason.split(":")[0] for name, reason in stats.skipped} == {
        "e.wav": "unreadable",
        "d.wav": "silent",
    }

    with tarfile.open(stats.shards[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("000000000.json").read())
    assert names == ["000000000.wav", "000000000.json", "000000001.wav", "000000001.json"]
    assert meta == {"name": "a.wav", "sample_rate": SR, "frames": 8000, "channels": 1}

    shards = open_source(tmp_path / "out")
    assert isinstance(shards, ShardSource) and len(shards) == 3 and shards.skipped == []
    assert shards.sample_rate is None and not shards.labeled  # 16 kHz and 22.05 kHz clips
    assert shards.name(2) == "shard-000001.tar/000000002.wav"
    by_name = {source.name(i): i for i in range(len(source))}
    assert [shards.meta(i)["name"] for i in range(3)] == ["a.wav", "c.wav", "sub/b.flac"]
    # a 16-bit source comes back bit for bit; others within half a 16-bit step of rounding,
    # except +1.0 (the peak of the normalised float file), which int16 holds as 1 - 2**-15
    np.testing.assert_array_equal(shards.load(0)[0], source.load(by_name["a.wav"])[0])
    for i in (1, 2):
        wave, rate = shards.load(i)
        reference, reference_rate = source.load(by_name[shards.meta(i)["name"]])
        assert rate == reference_rate and wave.shape == reference.shape
        error = np.abs(wave - reference)
        assert error[reference < 1.0].max() <= LSB / 2 and error.max() <= LSB

    # reproducible bytes: same input, same shards
    again = write_shards(source, tmp_path / "again", max_count=2)
    for a, b in zip(stats.shards, again.shards):
        assert open(a, "rb").read() == open(b, "rb").read()
    with pytest.raises(DataError, match="already holds shards"):
        write_shards(source, tmp_path / "out")


def test_flac_shards_hold_the_int16_samples_and_resampling(folder, tmp_path):
    source = open_source(folder)
    pcm = open_source(write_shards(source, tmp_path / "pcm").shards[0])
    flac = ShardSource(write_shards(source, tmp_path / "flac", fmt="flac").shards)
    assert flac.name(0).endswith(".flac")
    for i in range(len(pcm)):
        np.testing.assert_array_equal(pcm.load(i)[0], flac.load(i)[0])

    at16k = ShardSource(write_shards(source, tmp_path / "16k", sample_rate=SR).shards)
    assert at16k.sample_rate == SR
    assert at16k.meta(1)["name"] == source.name(1) == "c.wav"
    wave, rate = at16k.load(1)  # the 22.05 kHz float file, peak-normalised, then resampled
    expected = np.clip(resample(source.load(1)[0], 22050, SR), -1, 1)
    assert rate == SR and wave.shape == expected.shape
    np.testing.assert_allclose(wave, expected, rtol=0, atol=LSB)


def test_shards_roll_over_by_size(folder, tmp_path):
    stats = write_shards(open_source(folder), tmp_path / "o", max_bytes=20_000)
    sizes = [len(open(p, "rb").read()) for p in stats.shards]
    assert len(stats.shards) == 3  # each ~10-16 kB sample would overflow a shard it joined
    assert len(open_source(tmp_path / "o")) == 3 and all(s > 0 for s in sizes)


def test_labels_travel_through_shards(tmp_path):
    labels = [["dog"], "cat", ["dog", "bird"]]  # a name, or a JSON list of names
    for i in range(len(labels)):
        sf.write(tmp_path / f"{i}.wav", _noise(i, 0.2), SR)
    (tmp_path / "m.jsonl").write_text(
        "\n".join(
            json.dumps({"path": f"{i}.wav", "label": label}) for i, label in enumerate(labels)
        )
    )
    source = open_source(tmp_path / "m.jsonl")
    assert source.class_names == ["bird", "cat", "dog"]
    stats = write_shards(source, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["bird", "cat", "dog"]
    shards = open_source(tmp_path / "out")
    assert shards.class_names == source.class_names and shards.multilabel
    assert [shards.labels(i) for i in range(3)] == [(2,), (1,), (2, 0)]
    np.testing.assert_array_equal(shards.targets(), source.targets())
    assert stats.clips == 3
    # a broken classes.json is named, not a JSON traceback
    (tmp_path / "out" / "classes.json").write_text('["bird", "cat"')
    with pytest.raises(DataError, match=r"cannot read .*classes\.json"):
        open_source(tmp_path / "out")
    (tmp_path / "out" / "classes.json").write_text('{"bird": 0}')
    with pytest.raises(DataError, match=r"classes\.json must hold a JSON list of class names"):
        open_source(tmp_path / "out")


def test_cli_shard_command(folder, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["shard", str(folder), str(out), "--format", "flac", "--max-count", "1"]) == 0
    text = capsys.readouterr().out
    assert "wrote 3 clips" in text and "into 3 shards" in text and "skipped 2" in text
    assert sorted(p.name for p in out.iterdir()) == [f"shard-00000{i}.tar" for i in range(3)]
    assert main(["shard", str(folder), str(out)]) == 2
    assert "already holds shards" in capsys.readouterr().err
    assert main(["shard", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_shard_specs(folder, tmp_path):
    assert expand_shard_pattern("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_shard_pattern("{a,b}-{8..10}") == ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]
    write_shards(open_source(folder), tmp_path / "o", max_count=1, prefix="train")
    by_pattern = open_source(str(tmp_path / "o" / "train-{000000..000002}.tar"))
    one = open_source(tmp_path / "o" / "train-000001.tar")
    assert len(by_pattern) == 3 and len(one) == 1
    np.testing.assert_array_equal(by_pattern.load(1)[0], one.load(0)[0])


def _tar(path, members):
    """A tar with ``members`` = [(name, bytes)] in order."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def _wav_bytes(data, sr=SR, subtype="PCM_16"):
    buffer = io.BytesIO()
    sf.write(buffer, data, sr, format="WAV", subtype=subtype)
    return buffer.getvalue()


def test_broken_shards_and_samples_are_skipped_with_reasons(tmp_path):
    good = _wav_bytes(_noise(0, 0.3))
    nan = _noise(1, 0.3)
    nan[7] = np.nan
    _tar(
        tmp_path / "s-0.tar",
        [
            ("good1.wav", good),
            ("good1.json", b'{"sample_rate": 16000, "frames": 4800}'),
            ("foreign.wav", _wav_bytes(_noise(2, 0.3))),  # no sidecar: probed from its bytes
            ("nojson.json", b"{}"),  # a sample without audio
            ("badmeta.wav", good),
            ("badmeta.json", b"{not json"),
            ("garbage.wav", b"\x00\x01" * 300),
            ("short.wav", _wav_bytes(_noise(3, 0.005))),
            ("nan.wav", _wav_bytes(nan, subtype="FLOAT")),
            ("silent.wav", _wav_bytes(np.zeros(3000, np.float32))),
            ("cut.wav", _wav_bytes(_noise(4, 0.2))[:-100]),
        ],
    )
    _tar(tmp_path / "s-1.tar", [("x.wav", good), ("y.wav", _wav_bytes(_noise(5, 0.5)))])
    with tarfile.open(tmp_path / "s-1.tar") as tar:
        cut = tar.getmember("y.wav").offset_data + 100
    data = (tmp_path / "s-1.tar").read_bytes()
    (tmp_path / "s-1.tar").write_bytes(data[:cut])  # an interrupted copy, inside y.wav
    (tmp_path / "s-2.tar").write_bytes(b"this is not a tar file" * 30)

    source = open_source(str(tmp_path / "s-{0..3}.tar"))
    kinds = {name.rsplit("/", 1)[-1]: reason.split(":")[0] for name, reason in source.skipped}
    assert kinds == {
        "nojson.?": "missing",
        "badmeta.wav": "unreadable",
        "garbage.wav": "unreadable",
        "short.wav": "too short",
        "cut.wav": "truncated",
        "y.wav": "truncated",
        "s-2.tar": "unreadable",
        "s-3.tar": "missing",
    }
    names = [source.name(i) for i in range(len(source))]
    assert names == [
        "s-0.tar/good1.wav",
        "s-0.tar/foreign.wav",
        "s-0.tar/nan.wav",
        "s-0.tar/silent.wav",
        "s-1.tar/x.wav",
    ]
    # what only decoding shows is skipped while batches are filled, and replaced
    dataset = ClipDataset(source, SR, 0.25)
    with make_loader(dataset, BatchOrder(batch_size=5, seed=0)) as batches:
        batch = next(batches)
    assert {n.rsplit("/", 1)[1]: r.split(":")[0] for n, r in batch["skipped"]} == {
        "nan.wav": "non-finite",
        "silent.wav": "silent",
    }
    assert set(batch["index"].tolist()) <= {0, 1, 4}

    with pytest.raises(DataError, match="no usable audio") as excinfo:
        open_source(tmp_path / "s-2.tar")
    assert "s-2.tar" in str(excinfo.value)


def test_torch_loader_on_shards_is_worker_count_and_resume_invariant(folder, tmp_path):
    for i in range(6):
        sf.write(folder / f"more{i}.flac", _noise(10 + i, 0.6), SR)
    write_shards(open_source(folder), tmp_path / "o", max_count=3)
    dataset = ClipDataset(open_source(tmp_path / "o"), SR, 0.25, seed=4)

    def take(batches, start_batch=0, **options):
        order = BatchOrder(3, seed=1, start_batch=start_batch)
        with make_loader(dataset, order, **options) as stream:
            return [next(stream) for _ in range(batches)]

    serial = take(6)
    for a, b in zip(serial, take(6, num_workers=2)):
        assert torch.equal(a["wave"], b["wave"]) and torch.equal(a["index"], b["index"])
    for a, b in zip(serial[4:], take(2, start_batch=4, num_workers=2)):
        assert torch.equal(a["wave"], b["wave"]) and torch.equal(a["index"], b["index"])
