"""``fastspec finetune --protocol P``: every protocol end to end on tiny fixtures in each
dataset's layout, on encoders exported by ``fastspec pretrain --steps 0``, and the recipe
pieces (balanced sampling, mixup, layer-wise lr decay, schedule, patch-out) against hand
computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open

from fastspec.cli import main
from fastspec.encoder import Encoder, export_encoder, load_encoder, save_encoder
from fastspec.evaluate.finetune import FinetuneSettings, fine_tune, lr_at
from fastspec.evaluate.metrics import accuracy, mean_average_precision
from fastspec.finetune import fresh_encoder, open_protocol_task, protocol_settings
from fastspec.finetune.augment import (
    balanced_order,
    balanced_weights,
    layer_decay_groups,
    mixup,
    patch_out_ids,
    spec_augment,
)
from fastspec.finetune.protocols import PROTOCOL_DATA
from fastspec.finetune.trainer import ProtocolRecipe, training_logits
from fastspec.frontend import FrontendConfig
from fastspec.models import create_model

SR = 16000
# vit_mini by `fastspec pretrain --steps 0`; MAST (the pooling encoder) exported directly with
# the same front end: mast_mini on every protocol, mast_tiny (23 M parameters) on one
ENCODERS = ["vit_mini_patch16", "mast_mini"]
# one short epoch, small batches, short crops: the protocols' machinery, not their length
# (no warm-up: with one epoch of one step it would hold the lr at 0, as Audio-MAE's first step)
FAST = ["--epochs", "1", "--batch-size", "4", "--set", "clip_seconds=0.5", "--workers", "0"]
FAST += ["--set", "warmup_epochs=0"]
FAST += ["--device", "cpu", "--seed", "0"]


def _tone(path, k: int, seed: int, seconds: float = 0.5) -> None:
    """A clip of class k: a tone at 400 (k + 1) Hz in a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    wave = 0.3 * np.sin(
        2 * np.pi * 400 * (k + 1) * t + rng.uniform(0, 6)
    ) + 0.01 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), SR)


def make_esc50(root):
    """ESC-50 layout: meta/esc50.csv + audio/, 5 folds x 2 classes x 1 clip."""
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for k, name in enumerate(["dog", "rain"]):
            fname = f"{fold}-{100 + k}-A-{k}.wav"
            _tone(root / "audio" / fname, k, fold * 10 + k)
            rows.append(f"{fname},{fold},{k},{name},False,{100 + k},A")
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return str(root)


def make_speechcommands(root):
    """Speech Commands v2 layout: <keyword>/<speaker>_nohash_0.wav + the two lists."""
    val, test = [], []
    for k, word in enumerate(["no", "yes"]):
        for s in range(5):
            name = f"{word}/spk{s}_nohash_0.wav"
            _tone(root / name, k, 100 + 10 * k + s)
            (val if s == 3 else test if s == 4 else []).append(name)
    _tone(root / "_background_noise_" / "noise.wav", 0, 7)  # never a class
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return str(root)


def make_audioset(root):
    """AudioSet layout: segment CSVs, class_labels_indices.csv and a folder of clips;
    multi-label rows over three classes."""
    mids = ["/m/aa", "/m/bb", "/m/cc"]
    labels = ["index,mid,display_name"] + [f'{i},{m},"class {i}"' for i, m in enumerate(mids)]
    (root / "audio").mkdir(parents=True)
    (root / "class_labels_indices.csv").write_text("\n".join(labels) + "\n")
    sets = {"balanced_train_segments.csv": 9, "eval_segments.csv": 6}
    for n, (csv_name, count) in enumerate(sets.items()):
        rows = ["# Segments csv", "# YTID, start_seconds, end_seconds, positive_labels"]
        for i in range(count):
            ytid = f"{'tr' if n == 0 else 'ev'}{i:09d}"
            k = i % 3
            tags = [mids[k]] + ([mids[(k + 1) % 3]] if i % 2 else [])
            _tone(root / "audio" / f"Y{ytid}.wav", k, 200 + 20 * n + i)
            rows.append(f'{ytid}, 30.000, 40.000, "{",".join(tags)}"')
        (root / csv_name).write_text("\n".join(rows) + "\n")
    return f"{root / 'balanced_train_segments.csv'}?audio={root / 'audio'}"


def make_folder(root):
    """A folder per class, 5 clips each."""
    for k, name in enumerate(["bird", "car"]):
        for i in range(5):
            _tone(root / name / f"{i}.wav", k, 300 + 10 * k + i)
    return str(root)


FIXTURES = {
    "audioset": make_audioset,
    "esc50": make_esc50,
    "speechcommands": make_speechcommands,
    "folder": make_folder,
    # ATST-Frame's recipes (SGD, clipping, mixup alpha 10) on the same data
    "atst-audioset": make_audioset,
    "atst-speechcommands": make_speechcommands,
}
CLASSES = {"audioset": 3, "esc50": 2, "speechcommands": 2, "folder": 2}
CLASSES |= {"atst-audioset": 3, "atst-speechcommands": 2}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """vit_mini exported by ``fastspec pretrain --steps 0`` (no training), and MAST encoders
    with its front end (``export_encoder``, what ``pretrain --steps 0`` writes)."""
    root = tmp_path_factory.mktemp("enc")
    vit = root / "vit_mini_patch16"
    argv = ["pretrain", "--steps", "0", "--model", "vit_mini_patch16", "--out", str(vit)]
    assert main(argv + ["--no-progress", "--device", "cpu"]) == 0
    out = {"vit_mini_patch16": vit}
    frontend = FrontendConfig.from_dict(json.loads((vit / "encoder.json").read_text())["frontend"])
    for name in ("mast_mini", "mast_tiny"):
        torch.manual_seed(0)
        export_encoder(create_model(name), frontend, root / name)
        out[name] = root / name
    return out


CASES = [(p, m) for m in ENCODERS for p in FIXTURES] + [("folder", "mast_tiny")]


def _test_scores(enc, task, split) -> np.ndarray:
    """The exported model's scores on ``split.test``, one clip at a time."""
    with torch.no_grad():
        logits = torch.cat([enc(task.clips.load(int(i), SR)[None]) for i in split.test])
    return (torch.sigmoid if task.multilabel else lambda x: x.softmax(1))(logits).numpy()


@pytest.mark.parametrize("protocol, model", CASES)
def test_protocol_end_to_end(protocol, model, encoders, tmp_path):
    data = FIXTURES[protocol](tmp_path / "data")
    if protocol == "esc50" and model != ENCODERS[0]:
        data += "?folds=1,2"  # the cross-validation over fewer folds: faster, same code
    out = tmp_path / "ft"
    argv = ["finetune", str(encoders[model]), data, "--protocol", protocol, "--out", str(out)]
    assert main(argv + FAST) == 0
    summary = json.loads((out / "finetune.json").read_text())
    task = open_protocol_task(protocol, data, seed=0)
    n_splits = {"esc50": 5 if model == ENCODERS[0] else 2}.get(protocol, 1)
    assert len(summary["splits"]) == len(task.splits) == n_splits
    data_kind = PROTOCOL_DATA.get(protocol, protocol)
    assert summary["metric"] == ("mAP" if data_kind == "audioset" else "accuracy")
    if protocol == "folder":  # stratified 80 / 20: one clip of each class tested
        assert sorted(task.labels()[task.splits[0].test]) == [0, 1]
    if data_kind == "speechcommands":  # validation / testing lists; no background noise class
        assert task.class_names == ["no", "yes"] and len(task.splits[0].val) == 2
    last = summary["splits"][-1]
    exported = out / f"fold-{n_splits}" if n_splits > 1 else out
    assert last["encoder"] == str(exported)
    enc = load_encoder(exported)
    assert enc.num_classes == CLASSES[protocol] and enc.model_name == model
    assert enc.class_names == summary["class_names"] == task.class_names
    wave = torch.randn(3, SR // 2) * 0.1
    logits = enc(wave, torch.tensor([SR // 2, SR // 3, SR // 4]))
    assert logits.shape == (3, CLASSES[protocol]) and torch.isfinite(logits).all()
    # the exported model gives the metric the run reported on that split's test clips
    split = task.splits[-1]
    scores = _test_scores(enc, task, split)
    metric = mean_average_precision if task.multilabel else accuracy
    assert metric(scores, task.targets[split.test]) == pytest.approx(last[summary["metric"]])
    # the header alone describes the head (a renamed .safetensors is a complete model)
    with safe_open(str(exported / "encoder.safetensors"), "pt") as f:
        head = json.loads(f.metadata()["fastspec_encoder"])["head"]
    assert head["num_classes"] == CLASSES[protocol] and head["class_names"] == enc.class_names
    # fine-tuning moved the backbone away from the pretrained weights
    source = load_encoder(encoders[model]).backbone.state_dict()
    tuned = enc.backbone.state_dict()
    assert any(not torch.equal(v, tuned[k]) for k, v in source.items())


def test_bad_input_is_a_clear_error(encoders, tmp_path, capsys):
    enc = str(encoders["vit_mini_patch16"])
    missing = str(tmp_path / "nowhere")
    assert main(["finetune", enc, missing, "--protocol", "esc50", "--out", str(tmp_path)]) == 2
    assert "esc50.csv" in capsys.readouterr().err
    data = make_folder(tmp_path / "data")
    assert main(["finetune", enc, data, "--out", str(tmp_path), "--set", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_protocol_without_its_tricks_trains_as_the_plain_recipe(encoders, tmp_path):
    """``fastspec finetune`` and ``evaluate --mode finetune`` run one loop: with augmentation,
    layer decay and weight decay off, a protocol recipe draws the same clips, crops and lr as
    the plain recipe, and its contract-level forward gives ``Encoder.forward``'s logits, so the
    two runs' losses and test scores agree to float rounding."""
    task = open_protocol_task("folder", make_folder(tmp_path / "data"), seed=0)
    source = load_encoder(encoders["vit_mini_patch16"])
    common = dict(epochs=2, batch_size=4, clip_seconds=0.3, warmup_epochs=0.5, weight_decay=0.0)
    plain = FinetuneSettings(lr=1e-3, head_lr=1e-3, **common)
    off = ["freqm=0", "timem=0", "layer_decay=1", "min_lr=0"]
    protocol = ProtocolRecipe(protocol_settings("folder", off, lr=1e-3, **common))
    runs = [
        fine_tune(
            lambda: fresh_encoder(source, "avg", 0.0),
            task,
            task.splits[0],
            recipe,
            device=torch.device("cpu"),
            workers=0,
            amp="none",
        )
        for recipe in (plain, protocol)
    ]
    assert runs[0].train_loss[0] != runs[0].train_loss[1]  # it trained
    np.testing.assert_allclose(runs[1].train_loss, runs[0].train_loss, rtol=1e-4)
    np.testing.assert_allclose(runs[1].test_scores, runs[0].test_scores, atol=1e-4)


def test_sgd_with_gradient_clipping_bounds_every_step(encoders, tmp_path):
    """ATST's optimiser: SGD (momentum 0.9) on gradients clipped to norm ``grad_clip``. Each
    step then moves the weights by at most lr x clip x 1 / (1 - 0.9) in norm; AdamW, or no
    clipping, moves them by orders of magnitude more at the same lr."""
    task = open_protocol_task("folder", make_folder(tmp_path / "data"), seed=0)
    source = load_encoder(encoders["vit_mini_patch16"])
    clip, lr = 1e-6, 0.5
    base = ["freqm=0", "timem=0", "layer_decay=1", "weight_decay=0", "warmup_epochs=0"]

    def moved(*overrides: str) -> float:
        settings = protocol_settings("folder", [*base, *overrides], lr=lr, epochs=1,
                                     batch_size=4, clip_seconds=0.3)  # fmt: skip
        result = fine_tune(lambda: fresh_encoder(source, "avg", 0.0), task, task.splits[0],
                           ProtocolRecipe(settings), device=torch.device("cpu"), workers=0,
                           amp="none")  # fmt: skip
        after = result.encoder.backbone.state_dict()
        diff = [(after[k].double() - v.double()).flatten() for k, v in
                source.backbone.state_dict().items()]  # fmt: skip
        return float(torch.cat(diff).norm())

    steps = -(-len(task.splits[0].train) // 4)
    bound = steps * lr * clip / (1 - 0.9)
    sgd_clipped = moved("optimizer=sgd", f"grad_clip={clip}")
    assert 0 < sgd_clipped <= bound * 1.001
    assert moved("optimizer=sgd") > 100 * bound  # no clipping
    assert moved(f"grad_clip={clip}") > 100 * bound  # AdamW normalises the clipped gradient
    with pytest.raises(ValueError, match="optimizer"):
        protocol_settings("folder", ["optimizer=lion"])


def test_atst_protocols_are_the_references():
    sc, aset = protocol_settings("atst-speechcommands"), protocol_settings("atst-audioset")
    for s in (sc, aset):
        assert (s.optimizer, s.grad_clip, s.weight_decay, s.layer_decay) == ("sgd", 3.0, 0.0, 0.75)
        assert (s.mixup_alpha, s.batch_size, s.peak_lr) == (10.0, 512, 2.0)  # 1.0 x 512 / 256
    assert (sc.epochs, sc.warmup_epochs, sc.clip_seconds) == (50, 5, 1.0)
    assert (aset.epochs, aset.warmup_epochs, aset.balanced) == (200, 5, True)


# ---- recipe pieces against hand computations ------------------------------------------------


def test_balanced_weights_by_hand():
    targets = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float32)
    # class counts 3, 2, 0: weight of a class 1000 / (count + 0.01), summed over a clip's labels
    wa, wb = 1000 / 3.01, 1000 / 2.01
    np.testing.assert_allclose(balanced_weights(targets), [wa, wa, wa + wb, wb], rtol=1e-6)


def test_balanced_order_draws_by_weight_without_replacement():
    weights = np.array([1.0, 1.0, 1.0, 97.0])
    order = balanced_order(weights, 4, seed=0)
    assert sorted(order) == [0, 1, 2, 3]  # without replacement
    firsts = [balanced_order(weights, 1, seed=s)[0] for s in range(200)]
    assert 0.9 < np.mean(np.array(firsts) == 3) <= 1.0  # P = 0.97
    with pytest.raises(ValueError, match="epoch_len"):
        balanced_order(weights, 5, seed=0)


def test_mixup_by_hand():
    gen = torch.Generator().manual_seed(3)
    mel = torch.randn(4, 6, 8)
    y = torch.eye(4)[:, :3].contiguous()
    lengths = torch.tensor([3, 1, 2, 2])
    m, t, n, lam = mixup(mel, y, lengths, alpha=0.5, prob=1.0, gen=gen)
    assert 0.0 < lam < 1.0
    for i in range(4):
        j = 3 - i  # the batch reversed
        torch.testing.assert_close(m[i], lam * mel[i] + (1 - lam) * mel[j])
        torch.testing.assert_close(t[i], lam * y[i] + (1 - lam) * y[j])
        assert n[i] == max(lengths[i], lengths[j])
    same = mixup(mel, y, lengths, alpha=0.5, prob=0.0, gen=gen)
    assert same[3] == 1.0 and torch.equal(same[0], mel)
    # Beta(10, 10) concentrates lambda near 0.5 (AST's dataloader draw)
    lams = [mixup(mel, y, lengths, 10.0, 1.0, gen)[3] for _ in range(50)]
    assert abs(np.mean(lams) - 0.5) < 0.05 and np.std(lams) < 0.2


def test_layer_decay_groups_by_hand():
    backbone = create_model("vit_mini_patch16")
    head = torch.nn.Linear(backbone.embed_dim, 5)
    groups = layer_decay_groups(backbone, head, weight_decay=0.05, layer_decay=0.75)
    depth = len(backbone.blocks)
    assert depth == 4
    scale, decay = {}, {}
    for g in groups:
        for name in g["names"]:
            scale[name], decay[name] = g["lr_scale"], g["weight_decay"]
    # L = 4 blocks -> 6 layers: embedding 0.75^5, block i 0.75^(4 - i), norm and head 1
    assert scale["patch_embed.weight"] == pytest.approx(0.2373046875)
    assert scale["cls_token"] == pytest.approx(0.2373046875)
    block0 = [scale[k] for k in scale if k.startswith("blocks.0.")]
    block3 = [scale[k] for k in scale if k.startswith("blocks.3.")]
    assert block0 and all(v == pytest.approx(0.31640625) for v in block0)
    assert block3 and all(v == pytest.approx(0.75) for v in block3)
    assert scale["norm.weight"] == 1.0 and scale["head.weight"] == 1.0
    assert decay["head.weight"] == 0.05 and decay["head.bias"] == 0.0
    assert decay["cls_token"] == 0.0 and decay["patch_embed.weight"] == 0.05
    assert all(decay[k] == 0.0 for k, p in backbone.named_parameters() if p.dim() == 1)
    assert len(scale) == len(list(backbone.parameters())) + 2  # every parameter, once


def test_lr_schedule_by_hand():
    assert lr_at(0.5, 1e-3, 1e-6, 1.0, 11.0) == pytest.approx(5e-4)
    assert lr_at(1.0, 1e-3, 1e-6, 1.0, 11.0) == pytest.approx(1e-3)
    mid = 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 0.5))
    assert lr_at(6.0, 1e-3, 1e-6, 1.0, 11.0) == pytest.approx(mid)
    assert lr_at(11.0, 1e-3, 1e-6, 1.0, 11.0) == pytest.approx(1e-6)


def test_patch_out_keeps_crossings_and_valid_columns():
    gen = torch.Generator().manual_seed(0)
    ids = patch_out_ids((10, 5), torch.tensor([10, 4]), 0.2, 0.2, gen)
    assert ids.shape == (2, 8 * 4)
    for row, valid in zip(ids, (10, 4)):
        t, f = row // 5, row % 5
        assert len(set(t.tolist())) == 8 and len(set(f.tolist())) == 4
        assert torch.equal(row, row.sort().values)
        assert set(range(valid)) <= set(t.tolist()) or valid > 8  # padding columns go first
    assert patch_out_ids((10, 5), torch.tensor([10]), 0.0, 0.0, gen) is None


def test_spec_augment_masks_one_band_each():
    gen = torch.Generator().manual_seed(1)
    mel = torch.ones(3, 40, 16)
    out = spec_augment(mel, torch.tensor([40, 20, 40]), freqm=6, timem=10, gen=gen)
    for row, frames in zip(out, (40, 20, 40)):
        zero_bins = (row == 0).all(dim=0).sum()
        zero_frames = (row == 0).all(dim=1).nonzero().flatten()
        assert zero_bins < 6 and len(zero_frames) < 10
        assert all(t < frames for t in zero_frames.tolist())
    assert (out == 0).any()


def test_settings_sources_and_overrides():
    a = protocol_settings("audioset")
    assert (a.layer_decay, a.mixup_alpha, a.mask_t_prob, a.balanced) == (0.75, 0.5, 0.2, True)
    assert a.peak_lr == pytest.approx(1e-3 * 32 / 256)
    s = protocol_settings("speechcommands", ["mixup_alpha=0", "balanced=yes"], epochs=2)
    assert (s.mixup_alpha, s.balanced, s.epochs) == (0.0, True, 2)
    assert s.peak_lr == pytest.approx(1e-3 * 64 / 256)
    assert protocol_settings("esc50", lr=2e-4).peak_lr == 2e-4  # absolute lr wins
    with pytest.raises(ValueError, match="layer_decay"):
        protocol_settings("esc50", ["layer_decay=1.5"])
    with pytest.raises(ValueError, match="protocol"):
        protocol_settings("imagenet")


def test_head_round_trip(tmp_path):
    source = create_model("vit_mini_patch16")
    enc = Encoder(FrontendConfig().to_dict(), "vit_mini_patch16", source.arch_config(), 4)
    enc.class_names = ["a", "b", "c", "d"]
    enc.reset_classifier(4, global_pool="token")
    torch.nn.init.normal_(enc.head.weight)
    save_encoder(enc.eval(), tmp_path / "m")
    back = load_encoder(tmp_path / "m" / "encoder.safetensors")
    wave = torch.randn(2, 8000) * 0.1
    torch.testing.assert_close(back(wave), enc(wave))
    assert back.global_pool == "token" and back.class_names == ["a", "b", "c", "d"]


@pytest.mark.parametrize("model", ["vit_mini_patch16", "mast_mini"])
def test_training_forward_matches_the_exported_forward(model):
    """With augmentation off, the contract-level training forward (front end, padding, token
    lengths, pooling of valid tokens, head) gives the logits of ``Encoder.forward``."""
    backbone = create_model(model)
    enc = Encoder(FrontendConfig().to_dict(), model, backbone.arch_config(), 3).eval()
    settings = protocol_settings("folder", ["freqm=0", "timem=0"])
    wave, lengths = torch.randn(3, 12000) * 0.1, torch.tensor([12000, 7000, 3000])
    with torch.no_grad():
        logits, _ = training_logits(enc, wave, lengths, torch.zeros(3, 3), settings, None)
        torch.testing.assert_close(logits, enc(wave, lengths), rtol=1e-4, atol=1e-5)
        # patch-out changes what the encoder sees: the logits move
        cut = protocol_settings("folder", ["freqm=0", "timem=0", "mask_t_prob=0.5"])
        gen = torch.Generator().manual_seed(0)
        moved, _ = training_logits(enc, wave, lengths, torch.zeros(3, 3), cut, gen)
    assert not torch.allclose(moved, logits)
