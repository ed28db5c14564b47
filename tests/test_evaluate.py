"""fastspec.evaluate: metrics, dataset protocols, linear probe, fine-tuning and the report.

Datasets are miniature copies of each published layout in tmp_path, filled with synthetic
class-dependent sounds (a tone per class, random phase, level, length and noise), so that a
probe must beat chance by a wide margin if the pipeline is right and cannot if labels and
clips were mixed up.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from fastspec.cli import main
from fastspec.data import DataError
from fastspec.encoder import export_encoder, load_encoder
from fastspec.evaluate import (
    EvalSettings,
    FinetuneSettings,
    accuracy,
    average_precision,
    evaluate,
    fine_tune,
    fit_linear_probe,
    kfold_splits,
    mean_average_precision,
    open_class_folders,
    open_task,
    per_class_average_precision,
)
from fastspec.evaluate.report import random_encoder
from fastspec.frontend import get_preset
from fastspec.models import create_model

SR = 16000
TONES = (300.0, 900.0, 2000.0, 4200.0)  # Hz, one per class


def _sound(labels, seed, sr=SR, seconds=None):
    """A clip holding the tones of ``labels`` (class indices) over a little noise."""
    rng = np.random.default_rng(seed)
    n = round((seconds or rng.uniform(0.4, 0.8)) * sr)
    t = np.arange(n) / sr
    x = 0.02 * rng.standard_normal(n)
    for k in labels:
        f = TONES[k] * (1 + 0.03 * rng.standard_normal())
        x += rng.uniform(0.1, 0.3) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return x.astype(np.float32)


def _write(path, labels, seed, sr=SR, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _sound(labels, seed, sr, **kw), sr)
    return path


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for this module's tiny models: two gain nothing at these sizes, and
    when the 2 cores are shared with other processes, OpenMP's spin-waiting turns every small
    op into milliseconds (30-100x slower steps measured on the shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(123)  # not the evaluation seed: the random baseline must differ
    export_encoder(create_model("vit_mini_patch16", n_mels=64), get_preset("kaldi", n_mels=64), out)
    return out


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory):
    """ROOT/<class>/*.wav, 3 classes x 8 clips, plus an unlabeled file and a silent one."""
    root = tmp_path_factory.mktemp("folders")
    for k, name in enumerate(["hum", "whistle", "beep"]):
        for i in range(8):
            _write(root / name / f"{i}.wav", [k], seed=100 * k + i)
    _write(root / "stray.wav", [0], seed=1)
    sf.write(root / "beep" / "silent.wav", np.zeros(8000, dtype=np.float32), SR)
    return root


@pytest.fixture(scope="module")
def esc50(tmp_path_factory):
    """ESC-50's layout (meta/esc50.csv, audio/ at 44.1 kHz): 5 folds x 3 classes x 2 clips."""
    root = tmp_path_factory.mktemp("ESC-50-master")
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for target, category in enumerate(["dog", "rooster", "rain"]):
            for take in "AB":
                name = f"{fold}-{100 + target}-{take}-{target}.wav"
                _write(
                    root / "audio" / name,
                    [target],
                    seed=fold * 100 + target * 10 + ord(take),
                    sr=44100,
                )
                rows.append(f"{name},{fold},{target},{category},False,{100 + target},{take}")
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def speech_commands(tmp_path_factory):
    """Speech Commands v2's layout: keyword folders, validation and testing lists."""
    root = tmp_path_factory.mktemp("speech_commands_v0.02")
    val, test = [], []
    for k, word in enumerate(["no", "up", "yes"]):
        for i in range(8):
            name = f"{word}/{i:08x}_nohash_0.wav"
            _write(root / name, [k], seed=1000 + 10 * k + i, seconds=1.0)
            (val if i == 5 else test if i >= 6 else []).append(name)
    _write(root / "_background_noise_" / "white_noise.wav", [0], seed=5, seconds=2.0)
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


@pytest.fixture(scope="module")
def audioset(tmp_path_factory):
    """AudioSet's layout: segment CSVs, class_labels_indices.csv, clips named by YouTube id;
    each clip holds one or two of 4 classes (multi-label)."""
    root = tmp_path_factory.mktemp("audioset")
    mids = ["/m/0a", "/m/0b", "/m/0c", "/m/0d"]
    (root / "class_labels_indices.csv").write_text(
        "index,mid,display_name\n"
        + "".join(f'{k},{mid},"class {k}"\n' for k, mid in enumerate(mids))
    )
    rng = np.random.default_rng(7)
    for split, n in (("balanced_train", 32), ("eval", 16)):
        lines = [
            "# Segments csv created Sun Mar  5 10:54:31 2017",
            f"# num_ytids={n}",
            "# YTID, start_seconds, end_seconds, positive_labels",
        ]
        for i in range(n):
            labels = sorted(rng.choice(4, size=1 + i % 2, replace=False).tolist())
            ytid = f"{split[:2]}{i:09d}"
            _write(root / "audio" / f"Y{ytid}_30.000_40.000.wav", labels, seed=i + 50 * len(split))
            lines.append(f'{ytid}, 30.000, 40.000, "{",".join(mids[k] for k in labels)}"')
        (root / f"{split}_segments.csv").write_text("\n".join(lines) + "\n")
    return root


# ---------------------------------------------------------------------------- metrics


def test_average_precision_by_hand():
    # positives at ranks 1, 3, 5: precision 1/1, 2/3, 3/5 at each recall step of 1/3
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    assert average_precision(scores, [1, 0, 1, 0, 1]) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # tied scores are one threshold: {0.9} gives P 1 at R 1/2, {0.5, 0.5} P 2/3 at R 1
    assert average_precision([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(
        0.5 * 1 + 0.5 * 2 / 3
    )
    assert average_precision([0.1, 0.9, 0.3], [0, 1, 0]) == 1.0
    assert np.isnan(average_precision([0.3, 0.2], [0, 0]))  # no positive: undefined


def test_map_skips_classes_without_positives_and_accuracy():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.7, 0.6, 0.3]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]])  # class 2 has no positive
    ap = per_class_average_precision(scores, targets)
    assert ap[0] == 1.0 and ap[1] == 1.0 and np.isnan(ap[2])
    assert mean_average_precision(scores, targets) == 1.0
    assert accuracy(scores, [0, 1, 1]) == pytest.approx(2 / 3)
    assert accuracy(scores, targets) == pytest.approx(2 / 3)  # one-hot targets work too
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        mean_average_precision(scores, targets[:2])


def test_map_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 12)) < 0.2).astype(int)
    targets[:, 11] = 0  # a class without positives is left out by both
    scores = np.round(rng.random((200, 12)) + 0.4 * targets, 1)  # rounding makes many ties
    ours = per_class_average_precision(scores, targets)
    for c in range(11):
        assert ours[c] == pytest.approx(
            metrics.average_precision_score(targets[:, c], scores[:, c])
        )
    ref = np.mean([metrics.average_precision_score(targets[:, c], scores[:, c]) for c in range(11)])
    assert mean_average_precision(scores, targets) == pytest.approx(ref)


# ---------------------------------------------------------------------------- protocols


def test_kfold_splits_are_stratified_disjoint_and_complete():
    labels = np.repeat(np.arange(3), [10, 7, 5])
    targets = np.eye(3, dtype=np.float32)[labels]
    splits = kfold_splits(targets, 5, seed=0)
    tests = np.concatenate([s.test for s in splits])
    assert sorted(tests.tolist()) == list(range(22))  # every clip tested exactly once
    for s in splits:
        assert not set(s.train) & set(s.test) and len(s.train) + len(s.test) == 22
        # stratified: each fold holds its share of every class, to within one clip
        counts = np.bincount(labels[s.test], minlength=3)
        assert (np.abs(counts - np.array([10, 7, 5]) / 5) < 1).all(), counts
    assert sorted(len(s.test) for s in splits) == [4, 4, 4, 5, 5]  # balanced fold sizes
    assert [s.test.tolist() for s in kfold_splits(targets, 5, seed=0)] == [
        s.test.tolist() for s in splits
    ]  # seeded
    with pytest.raises(ValueError, match="at least 2 folds"):
        kfold_splits(targets, 1)


def test_low_shot_draws_and_subsampled_splits(class_folders, speech_commands, audioset):
    # cross-validated data: each split is a draw of K clips per class from all clips, tested
    # on every other clip
    task = open_task(class_folders, folds=3, shots=3)
    labels, n = task.labels(), len(task.targets)
    assert task.protocol.startswith("low-shot, 3 draws of 3 labelled clips per class")
    assert [s.name for s in task.splits] == ["draw 1", "draw 2", "draw 3"]
    for split in task.splits:
        assert np.bincount(labels[split.train]).tolist() == [3, 3, 3]
        assert sorted(split.train.tolist() + split.test.tolist()) == list(range(n))
    assert len({tuple(s.train) for s in task.splits}) == 3  # independent draws
    again = open_task(class_folders, folds=3, shots=3)
    assert [s.train.tolist() for s in again.splits] == [s.train.tolist() for s in task.splits]
    other = open_task(class_folders, folds=3, shots=3, seed=1)
    assert [s.train.tolist() for s in other.splits] != [s.train.tolist() for s in task.splits]
    with pytest.raises(DataError, match="class 'hum' has 8 clips to draw from, fewer than shots=9"):
        open_task(class_folders, folds=2, shots=9)
    # data with their own splits keep them: K clips per class of the training clips
    full = open_task(f"speechcommands:{speech_commands}").splits[0]
    (split,) = open_task(f"speechcommands:{speech_commands}", shots=2).splits
    assert set(split.train) <= set(full.train) and len(split.train) == 6
    assert np.array_equal(split.test, full.test) and np.array_equal(split.val, full.val)
    with pytest.raises(DataError, match="test: class 'no' has 5 clips to draw from"):
        open_task(f"speechcommands:{speech_commands}", shots=6)
    with pytest.raises(DataError, match="single-label"):
        open_task(
            f"audioset:{audioset}/balanced_train_segments.csv?audio={audioset}/audio", shots=1
        )


def test_class_folders(class_folders):
    source = open_class_folders(class_folders)
    assert source.class_names == ["beep", "hum", "whistle"]
    assert len(source) == 25  # 24 tones + the silent file (only decoding reveals it)
    assert ("stray.wav", "unlabeled: not inside a class folder") in source.skipped
    assert source.name(0) == "beep/0.wav" and source.label(0) == 0


def test_protocol_of_each_layout(class_folders, esc50, speech_commands, audioset, tmp_path):
    task = open_task(class_folders, folds=4)
    assert task.protocol.startswith("stratified 4-fold") and len(task.splits) == 4
    assert task.metric == "accuracy" and task.num_classes == 3

    task = open_task(f"esc50:{esc50}")
    assert task.name == "ESC-50" and [s.name for s in task.splits] == [
        f"fold {k}" for k in range(1, 6)
    ]
    for k, split in enumerate(task.splits, start=1):
        names = {task.clips.name(i) for i in split.test}
        assert len(names) == 6 and all(n.startswith(f"{k}-") for n in names)
        assert len(split.train) == 24
    assert len(open_task(f"esc50:{esc50}?folds=1,2,3").splits) == 3

    task = open_task(f"speechcommands:{speech_commands}")
    (split,) = task.splits
    assert (len(split.train), len(split.val), len(split.test)) == (15, 3, 6)
    assert task.class_names == ["no", "up", "yes"] and not task.multilabel

    task = open_task(f"audioset:{audioset / 'balanced_train_segments.csv'}?audio={audioset}/audio")
    (split,) = task.splits
    assert task.multilabel and task.metric == "mAP" and task.num_classes == 4
    assert (len(split.train), len(split.test)) == (32, 16)
    assert task.targets.sum(axis=1).max() == 2
    with pytest.raises(DataError, match="--test-data"):
        open_task(f"audioset:{audioset / 'eval_segments.csv'}?audio={audioset}/audio")

    # a labelled manifest for training, class folders for testing: classes merged by name
    manifest = tmp_path / "train.csv"
    manifest.write_text(
        "path,label\n"
        + "".join(f"{class_folders}/hum/{i}.wav,hum\n" for i in range(4))
        + "".join(f"{class_folders}/beep/{i}.wav,beep\n" for i in range(4))
    )
    task = open_task(manifest, test_data=class_folders)
    assert task.class_names == ["beep", "hum", "whistle"] and task.protocol == "train / test"
    assert task.targets[:8].argmax(1).tolist() == [1] * 4 + [0] * 4


def test_split_folders(tmp_path):
    for split, n in (("train", 4), ("valid", 2), ("test", 2)):
        for k, name in enumerate(["a", "b"]):
            for i in range(n):
                _write(tmp_path / split / name / f"{i}.wav", [k], seed=k * 10 + i)
    task = open_task(tmp_path)
    (split,) = task.splits
    assert task.protocol == "train / validation / test"
    assert (len(split.train), len(split.val), len(split.test)) == (8, 4, 4)
    with pytest.raises(DataError, match="no audio in any subfolder"):
        open_task(tmp_path / "train" / "a", test_data=tmp_path / "test")  # files, no classes
    unlabeled = tmp_path / "unlabeled.csv"
    unlabeled.write_text("path\n" + "".join(f"train/a/{i}.wav\n" for i in range(4)))
    with pytest.raises(DataError, match="carries no labels"):
        open_task(unlabeled, test_data=tmp_path / "test")


# ---------------------------------------------------------------------------- probe, fine-tuning


def test_linear_probe_is_deterministic_and_selects_l2():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    x = rng.standard_normal((90, 16)) + 2.0 * np.eye(3, 16)[y]
    targets = np.eye(3, dtype=np.float32)[y]
    a = fit_linear_probe(x[:60], targets[:60], multilabel=False)
    b = fit_linear_probe(x[:60], targets[:60], multilabel=False)
    assert torch.equal(a.weight, b.weight) and a.weight_decay in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    assert accuracy(a.scores(x[60:]), y[60:]) > 0.8
    # a given validation set; multi-label targets use sigmoid outputs
    multi = (rng.random((90, 3)) < 0.4).astype(np.float32)
    xm = rng.standard_normal((90, 16)) + 2.0 * multi @ np.eye(3, 16)
    probe = fit_linear_probe(
        xm[:50], multi[:50], multilabel=True, x_val=xm[50:70], y_val=multi[50:70]
    )
    scores = probe.scores(xm[70:])
    assert scores.shape == (20, 3) and not np.allclose(scores.sum(1), 1)
    assert mean_average_precision(scores, multi[70:]) > 0.8


def test_fine_tuning_learns_and_picks_the_epoch_on_validation(speech_commands, encoder_dir):
    task = open_task(f"speechcommands:{speech_commands}")
    split = task.splits[0]
    # a short, hot schedule: 3 epochs of 3 steps are enough for tones on the 2-core CPU
    settings = FinetuneSettings(epochs=3, batch_size=6, lr=3e-4, head_lr=3e-2, clip_seconds=0.5)
    result = fine_tune(
        lambda: load_encoder(encoder_dir),
        task,
        split,
        settings,
        device=torch.device("cpu"),
        workers=0,
    )
    assert len(result.train_loss) == len(result.val_metric) == 3
    assert result.train_loss[-1] < result.train_loss[0]
    assert result.epoch == 1 + int(np.argmax(result.val_metric))
    assert result.test_scores.shape == (6, 3)
    np.testing.assert_allclose(result.test_scores.sum(1), 1, rtol=1e-5)
    assert accuracy(result.test_scores, task.targets[split.test]) > 0.5  # chance is 1/3


# ---------------------------------------------------------------------------- the report


def test_esc50_linear_report(esc50, encoder_dir, tmp_path):
    task = open_task(f"esc50:{esc50}")
    report = evaluate(encoder_dir, task, EvalSettings(workers=0))
    assert [(r.method, r.mode) for r in report.rows] == [
        ("fastspec", "linear"),
        ("random", "linear"),
        ("logmel", "linear"),
    ]
    for row in report.rows:
        acc = row.metrics["accuracy"]
        assert set(acc["splits"]) == {f"fold {k}" for k in range(1, 6)}
        assert acc["mean"] == pytest.approx(np.mean(list(acc["splits"].values())))
        assert acc["mean"] > 0.6  # chance is 1/3
    assert report.rows[2].details["embed_dim"] == 128  # 64 mel means + 64 stds
    table = report.table()
    for text in (
        "ESC-50",
        "leave-one-fold-out",
        "fastspec vit_mini_patch16",
        "random init",
        "log-mel mean+std (128-d)",
        "±",
    ):
        assert text in table
    saved = json.loads(report.save(tmp_path / "r.json").read_text())
    assert saved["task"]["clips"] == 30 and saved["task"]["splits"] == 5
    assert saved["encoder"]["model_name"] == "vit_mini_patch16"
    assert {r["method"] for r in saved["results"]} == {"fastspec", "random", "logmel"}
    # the random baseline is a fresh draw of the same architecture, not the exported weights
    exported = load_encoder(encoder_dir)
    baseline = random_encoder(exported, seed=0)
    assert baseline.model_config == exported.model_config
    assert not torch.equal(
        baseline.backbone.patch_embed.weight, exported.backbone.patch_embed.weight
    )


def test_audioset_multilabel_report(audioset, encoder_dir):
    task = open_task(f"audioset:{audioset / 'balanced_train_segments.csv'}?audio={audioset}/audio")
    report = evaluate(encoder_dir, task, EvalSettings(workers=1))
    assert report.metric_names() == ["mAP"]
    for row in report.rows:
        assert set(row.metrics) == {"mAP"}
    # chance mAP is about the positive rate (~0.375 here); the tones make it easy
    assert report.value("logmel", "linear", "mAP")["mean"] > 0.7
    assert "mAP in %" in report.table() and "accuracy" not in report.table()


def test_cli_evaluate_with_bad_files(class_folders, encoder_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = ["evaluate", str(encoder_dir), str(class_folders), "--folds", "2", "--workers", "0",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "linear probe" in text and "log-mel mean+std" in text and f"report: {out}" in text
    report = json.loads(out.read_text())
    assert [(r["method"], r["mode"]) for r in report["results"]] == [
        ("fastspec", "linear"),
        ("random", "linear"),
        ("logmel", "linear"),
    ]
    for row in report["results"]:
        assert row["metrics"]["accuracy"]["mean"] > 0.6  # chance is 1/3
    skipped = {s["name"]: s["reason"] for s in report["task"]["skipped"]}
    assert skipped["stray.wav"].startswith("unlabeled")
    assert skipped["beep/silent.wav"].startswith("silent")
    assert report["task"]["clips"] == 24 and report["task"]["splits"] == 2


def test_cli_evaluate_finetune_mode(speech_commands, encoder_dir, tmp_path, capsys):
    """``--mode finetune`` runs the fine-tuning loop on the encoder and the random baseline
    (the log-mel row has no encoder: its linear probe only) and reports each epoch."""
    out = tmp_path / "ft.json"
    argv = ["evaluate", str(encoder_dir), f"speechcommands:{speech_commands}", "--mode",
            "finetune", "--ft-epochs", "2", "--ft-batch-size", "6", "--ft-clip-seconds", "0.5",
            "--ft-lr", "3e-4", "--ft-head-lr", "3e-2", "--workers", "0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "fine-tune" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert [(r["method"], r["mode"]) for r in report["results"]] == [
        ("logmel", "linear"),
        ("fastspec", "finetune"),
        ("random", "finetune"),
    ]
    for row in report["results"][1:]:
        (split,) = row["details"]["splits"].values()
        assert len(split["train_loss"]) == len(split["val_metric"]) == 2
        assert split["epoch"] == 1 + int(np.argmax(split["val_metric"]))
        assert 0.0 <= row["metrics"]["accuracy"]["mean"] <= 1.0


def test_cli_evaluate_errors(tmp_path, class_folders, encoder_dir, capsys):
    assert main(["evaluate", str(tmp_path / "none"), str(class_folders)]) == 2
    assert "no fastspec encoder" in capsys.readouterr().err
    (tmp_path / "a.wav").write_bytes(b"")
    assert main(["evaluate", str(encoder_dir), str(tmp_path)]) == 2
    assert "no audio in any subfolder" in capsys.readouterr().err
    assert main(["evaluate", str(encoder_dir), str(class_folders), "--shots", "9"]) == 2
    assert "fewer than shots=9" in capsys.readouterr().err
