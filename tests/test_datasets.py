"""Dataset readers (ESC-50, Speech Commands v2, AudioSet), labeled manifests and segments.

Each test builds a miniature copy of the dataset's published layout in tmp_path (tiny clips, the
real file and column names), so the readers are checked against the layout, not the content.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from fastspec.data import (
    ClipDataset,
    DataError,
    LabeledSource,
    open_audioset,
    open_esc50,
    open_source,
    open_speech_commands,
)

SR = 16000


def _clip(path, seconds=0.2, sr=SR, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, (0.3 * rng.standard_normal(round(seconds * sr))).astype(np.float32), sr)
    return path


# --------------------------------------------------------------------------- ESC-50


@pytest.fixture
def esc50(tmp_path):
    """ESC-50's layout: meta/esc50.csv (filename,fold,target,category,esc10,src_file,take)."""
    root = tmp_path / "ESC-50-master"
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    categories = ["dog", "rooster", "rain"]
    for fold in range(1, 6):
        for target, category in enumerate(categories):
            name = f"{fold}-{100 + target}-A-{target}.wav"
            _clip(root / "audio" / name, 0.2, 44100, seed=fold * 10 + target)
            rows.append(f"{name},{fold},{target},{category},{target == 0},{100 + target},A")
    rows.append("5-999-A-1.wav,5,1,rooster,False,999,A")  # listed, but the file is missing
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


def test_esc50_folds_labels_and_names(esc50):
    train = open_esc50(esc50, folds=[1, 2, 3, 4])
    assert isinstance(train, LabeledSource) and len(train) == 12
    assert train.class_names == ["dog", "rooster", "rain"] and train.split == "folds 1,2,3,4"
    assert train.name(0) == "1-100-A-0.wav" and train.label(2) == 2 and train.labels(1) == (1,)
    assert not train.multilabel and train.sample_rate == 44100
    targets = train.targets()
    assert targets.shape == (12, 3) and (targets.sum(axis=1) == 1).all()

    test = open_esc50(esc50, folds=5)
    assert len(test) == 3 and test.skipped[0][0] == "5-999-A-1.wav"
    assert test.skipped[0][1].startswith("missing")
    assert {train.name(i) for i in range(len(train))}.isdisjoint(test.name(i) for i in range(3))
    assert len(open_esc50(esc50)) == 15  # all folds
    # --data esc50:ROOT?folds=... for pretraining (labels ignored)
    assert len(open_source(f"esc50:{esc50}?folds=1,2")) == 6
    with pytest.raises(DataError, match="folds must be among"):
        open_esc50(esc50, folds=6)
    with pytest.raises(DataError, match="unknown option 'fold'"):
        open_source(f"esc50:{esc50}?fold=1")
    with pytest.raises(DataError, match=r"folds must be integers .* got '1,a'"):
        open_source(f"esc50:{esc50}?folds=1,a")


# --------------------------------------------------------------------------- Speech Commands


@pytest.fixture
def speech_commands(tmp_path):
    root = tmp_path / "speech_commands_v0.02"
    files = {
        "yes": ["aa_nohash_0", "bb_nohash_0", "cc_nohash_1"],
        "no": ["aa_nohash_0", "dd_nohash_0"],
        "zero": ["ee_nohash_2"],
    }
    for k, (word, stems) in enumerate(sorted(files.items())):
        for j, stem in enumerate(stems):
            _clip(root / word / f"{stem}.wav", 0.1, seed=10 * k + j)
    _clip(root / "_background_noise_" / "white_noise.wav", 2.0)
    (root / "validation_list.txt").write_text("yes/bb_nohash_0.wav\nno/dd_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/cc_nohash_1.wav\n")
    (root / "LICENSE").write_text("cc-by")
    return root


def test_speech_commands_splits(speech_commands):
    train = open_speech_commands(speech_commands, "train")
    assert train.class_names == ["no", "yes", "zero"]  # _background_noise_ is not a keyword
    names = [train.name(i) for i in range(len(train))]
    assert names == ["no/aa_nohash_0.wav", "yes/aa_nohash_0.wav", "zero/ee_nohash_2.wav"]
    assert [train.label(i) for i in range(3)] == [0, 1, 2] and train.split == "train"
    validation = open_speech_commands(speech_commands, "validation")
    assert [validation.name(i) for i in range(2)] == ["no/dd_nohash_0.wav", "yes/bb_nohash_0.wav"]
    test = open_speech_commands(speech_commands, "test")
    assert len(test) == 1 and test.labels(0) == (1,)
    everything = open_speech_commands(speech_commands, "all")
    assert len(everything) == 6
    assert all("_background_noise_" not in everything.name(i) for i in range(6))
    assert len(open_source(f"speechcommands:{speech_commands}?split=validation")) == 2
    with pytest.raises(DataError, match="split must be one of"):
        open_speech_commands(speech_commands, "dev")
    (speech_commands / "testing_list.txt").unlink()
    with pytest.raises(DataError, match="testing_list.txt"):
        open_speech_commands(speech_commands, "train")


# --------------------------------------------------------------------------- AudioSet


@pytest.fixture
def audioset(tmp_path):
    root = tmp_path / "audioset"
    root.mkdir()
    (root / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n'
        '2,/m/0jbk,"Animal"\n'
    )
    (root / "balanced_train_segments.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=5, num_segs=5, num_unique_labels=3, num_positive_labels=7\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/05zppz"\n'
        '-0RWZT-miFs, 420.000, 430.000, "/m/0jbk"\n'
        'YabcdefghiJ, 0.000, 10.000, "/m/0jbk,/m/09x0r"\n'
        'missingYTid, 10.000, 20.000, "/m/09x0r"\n'
        'unknownMIDx, 10.000, 20.000, "/m/zzzz"\n'
    )
    # the naming schemes of common downloaders, in subfolders
    _clip(root / "audio" / "--PJHxphWEs.wav", 0.5)
    _clip(root / "audio" / "bal" / "Y-0RWZT-miFs_420.000_430.000.flac", 0.5, seed=1)
    _clip(root / "audio" / "YYabcdefghiJ.wav", 0.5, seed=2)
    _clip(root / "audio" / "unknownMIDx.wav", 0.5, seed=3)
    return root


def test_audioset_segments_and_multilabels(audioset):
    source = open_audioset(audioset / "balanced_train_segments.csv", audioset / "audio")
    assert source.class_names == ["Speech", "Male speech, man speaking", "Animal"]
    assert [source.name(i) for i in range(len(source))] == [
        "--PJHxphWEs_30.000_40.000",
        "-0RWZT-miFs_420.000_430.000",
        "YabcdefghiJ_0.000_10.000",
    ]
    assert [source.labels(i) for i in range(3)] == [(0, 1), (2,), (2, 0)]
    assert source.multilabel and source.split == "balanced_train_segments"
    np.testing.assert_array_equal(source.targets(), [[1, 1, 0], [0, 0, 1], [1, 0, 1]])
    with pytest.raises(DataError, match="has 2 labels"):
        source.label(0)
    kinds = {name: reason.split(":")[0] for name, reason in source.skipped}
    assert kinds == {
        "missingYTid_10.000_20.000": "missing",
        "unknownMIDx_10.000_20.000": "unreadable",
    }
    spec = f"audioset:{audioset / 'balanced_train_segments.csv'}?audio={audioset / 'audio'}"
    assert len(open_source(spec)) == 3


def test_audioset_full_videos_use_the_segment(audioset, tmp_path):
    csv = tmp_path / "eval_segments.csv"
    csv.write_text(
        '# YTID, start_seconds, end_seconds, positive_labels\nv1deo-IDxyz, 1.0, 1.5, "/m/0jbk"\n'
    )
    _clip(tmp_path / "videos" / "v1deo-IDxyz.flac", 3.0)
    source = open_audioset(
        csv, tmp_path / "videos", audioset / "class_labels_indices.csv", full_videos=True
    )
    wave, sr = source.load(0)
    whole, _ = sf.read(tmp_path / "videos" / "v1deo-IDxyz.flac", dtype="float32")
    np.testing.assert_array_equal(wave, whole[16000:24000])


# --------------------------------------------------------------------------- manifests


def test_manifest_labels_and_segments(tmp_path):
    _clip(tmp_path / "a.wav", 2.0)
    _clip(tmp_path / "b.flac", 1.0, sr=22050, seed=1)
    (tmp_path / "m.csv").write_text(
        "Path,Label,Offset,Duration\n"
        "a.wav,dog,0.5,1.0\n"  # frames 8000..24000
        "a.wav,cat;dog,1.5,\n"  # to the end: 8000 frames
        "b.flac,,,\n"  # no label: an unlabeled row of a labeled manifest
        "a.wav,dog,2.5,1\n"  # starts past the end
        "a.wav,dog,abc,1\n"  # not a number
        "adir.wav,dog,,\n"  # exists, but cannot be read as a file
    )
    (tmp_path / "adir.wav").mkdir()
    source = open_source(tmp_path / "m.csv")
    assert isinstance(source, LabeledSource) and source.class_names == ["cat", "dog"]
    assert [source.labels(i) for i in range(3)] == [(1,), (0, 1), ()]
    whole = sf.read(tmp_path / "a.wav", dtype="float32")[0]
    np.testing.assert_array_equal(source.load(0)[0], whole[8000:24000])
    np.testing.assert_array_equal(source.load(1)[0], whole[24000:])
    assert source.span(0) == (SR, 32000, 8000, 16000)
    reasons = dict(source.skipped)
    assert reasons["a.wav"].startswith("too short: offset 2.5 s is past the end")
    assert reasons["m.csv:6"] == "unreadable: offset 'abc' is not a number"
    assert reasons["adir.wav"].startswith("unreadable")
    # crops come from the segment
    dataset = ClipDataset(source, SR, 0.5, seed=0)
    item = dataset[(0, 0)]
    windows = np.lib.stride_tricks.sliding_window_view(whole[8000:24000], 8000)
    assert (windows == item["wave"].numpy()).all(axis=1).any()


def test_numeric_labels_sort_numerically(tmp_path):
    for i in range(3):
        _clip(tmp_path / f"{i}.wav", seed=i)
    lines = [json.dumps({"path": f"{i}.wav", "label": label}) for i, label in enumerate([10, 2, 1])]
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    source = open_source(tmp_path / "m.jsonl")
    assert source.class_names == ["1", "2", "10"]
    assert [source.label(i) for i in range(3)] == [2, 1, 0]


def test_unlabeled_sources_say_so(tmp_path):
    _clip(tmp_path / "a.wav")
    source = open_source(tmp_path)
    assert not source.labeled
    with pytest.raises(DataError, match="carries no labels"):
        source.labels(0)
    with pytest.raises(DataError, match="is not a dataset kind"):
        open_source("nosuchkind:/nowhere")
