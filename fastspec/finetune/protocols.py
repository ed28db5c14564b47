"""The fine-tuning protocols of the papers: their settings and the source of each (the clips
and splits of each: :mod:`fastspec.finetune.tasks`).

``fastspec finetune ENCODER DATA --protocol P`` (P below; default ``folder``). Every number
names the reference file it comes from; a number no reference gives is marked *fastspec*.

AST = YuanGongND/ast (``egs/audioset/run.sh``, ``egs/esc50/run_esc.sh``); Audio-MAE =
facebookresearch/AudioMAE (``ft_as.sh``, ``submit_ft_mask_bal.sh``, ``main_finetune_as.py``,
``main_finetune_esc.py``, ``dataset/audioset/gen_weight.py``); MaskSpec =
WangHelin1997/MaskSpec (``scv2/run.py``, ``scv2/run.sh``). ATST = Audio-WestlakeU/audiossl
(``methods/atstframe/downstream/train_finetune.py``, ``model.py``, ``shell/downtream/finetune/
eval_batch.sh``, ``eval_spcv2.sh``, ``eval_audioset_b.sh``): the ``atst-speechcommands`` and
``atst-audioset`` protocols, on the same data as ``speechcommands`` / ``audioset``.

==================  ===================================  ================================  ==========================  ==============================
setting             ``audioset``                         ``esc50``                         ``speechcommands``          ``folder``
==================  ===================================  ================================  ==========================  ==============================
data / splits       train CSV, test ``eval_segments``    5-fold CV over the ESC-50 folds   v2 train / validation /     class folders or a manifest:
                                                                                           test lists (35 classes)     stratified 80 / 20 split
metric              mAP                                  accuracy (mean over folds)        accuracy                    accuracy (mAP if multi-label)
lr                  blr 1e-3 x batch / 256 (ft_as.sh)    blr 1e-3 (main_finetune_esc)      blr 1e-3 (scv2/run.py)      blr 1e-3 (*fastspec*, as esc50)
batch               32 = 8 x 4 GPUs (ft_as.sh)           64 (main_finetune_esc)            64 x 1 GPU (scv2/run.sh)    32 (*fastspec*)
epochs / warm-up    60 / 4 (ft_as.sh)                    50 / 5 (main_finetune_esc)        80 / 5 (scv2/run.py)        10 / 1 (*fastspec*)
layer-wise decay    0.75 (main_finetune_as)              0.75 (main_finetune_esc)          0.75 (scv2/run.py)          0.75 (*fastspec*, as esc50)
weight decay        5e-4 (main_finetune_as)              0.05 (main_finetune_esc)          0.05 (scv2/run.py)          0.05 (*fastspec*)
drop path           0.1 (main_finetune_as)               0.1 (main_finetune_esc)           0.1 (scv2/run.py)           0.1 (*fastspec*)
mixup               alpha 0.5, every batch (main_ft_as)  none (main_finetune_esc: 0)       alpha 0.3 (scv2/run.py)     none
SpecAugment         freqm 48, timem 192 (main_ft_as)     freqm 24, timem 96 (run_esc.sh)   none (scv2/run.py)          freqm 24, timem 96
patch-out (tokens)  t 0.2, f 0.2, 2-D (ft_as.sh)         none                              none                        none
balanced sampling   1000 / (count + 0.01) summed over    no                                no                          no
                    a clip's labels, without
                    replacement (gen_weight.py,
                    submit_ft_mask_bal.sh)
crop                10 s                                 5 s (the clip)                    1 s (the clip)              10 s (*fastspec*)
==================  ===================================  ================================  ==========================  ==============================

``atst-speechcommands`` / ``atst-audioset`` (ATST-Frame's scripts): SGD momentum 0.9, weight
decay 0, the gradient norm clipped at 3, layer decay 0.75, mixup alpha 10 on every batch, blr 1.0
per 256 clips at 4 GPUs x 128 = 512 (peak lr 2.0), cosine to 1e-6; Speech Commands 50 epochs /
5 warm-up, 1 s clips; AudioSet (balanced subset) 200 / 5 with balanced sampling. Deviations:
its head sits behind a non-affine batch norm (here the plain linear head); its random resize
crop (``rrc``) is not reproduced; mixup is this module's (the batch mixed with itself
reversed), not its ``FinetuneTargetTransform``; drop path 0.1 is *fastspec*'s default, not
taken from its scripts.

Deliberate deviations, the same for every protocol:

- one schedule: linear warm-up, then a half-cycle cosine to ``min_lr`` per step (Audio-MAE's
  ``util/lr_sched.py``; AST's ESC-50 step decay is not used, only its SpecAugment widths);
- mixup mixes the normalised log-mel of the whole batch with the batch reversed (timm ``Mixup``,
  batch mode, as Audio-MAE); MaskSpec mixes both waveforms and spectrograms (``wavmix``,
  ``specmix``), here the spectrogram only;
- SpecAugment widths are in the references' units (bins of a 128-mel input, 10 ms frames);
  ``freqm`` is scaled to the encoder's mel bins; masked values are 0 (the normalised mean);
- Audio-MAE's label smoothing (0.1, timm ``Mixup``) and roll-magnitude augmentation, MaskSpec's
  waveform roll, and AST's noise augmentation are not reproduced;
- AudioSet: Audio-MAE samples balanced only in its AudioSet-2M run (``submit_ft_mask_bal.sh``,
  ``epoch_len`` 200000, batch 4 x 64 GPUs); its balanced-subset run ``ft_as.sh`` samples
  uniformly (``balanced=false``). ``epoch_len`` defaults to the training set's size;
- the epoch chosen for testing is the best on the validation clips where the data have them
  (Speech Commands, a ``val`` folder), else the last one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# torch-free on purpose: the CLI takes the protocol names from here when it builds its parser
from fastspec.config_base import ConfigError, check_all, set_key

__all__ = ["OPTIMIZERS", "PROTOCOLS", "PROTOCOL_DATA", "ProtocolSettings", "protocol_settings"]

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class ProtocolSettings:
    """One protocol's fine-tuning recipe (``fastspec finetune --set key=value`` overrides)."""

    epochs: int = 10
    """Passes over the training clips (``epoch_len`` clips each with balanced sampling)."""
    batch_size: int = 32
    """Clips per optimizer step."""
    blr: float = 1e-3
    """Base learning rate: peak lr = blr x batch_size / 256 (Audio-MAE), unless ``lr`` is set."""
    lr: float = 0.0
    """Absolute peak learning rate (AST); 0 = from ``blr``."""
    min_lr: float = 1e-6
    """Floor of the cosine decay (Audio-MAE ``min_lr``)."""
    warmup_epochs: float = 1.0
    """Linear warm-up length in epochs."""
    layer_decay: float = 0.75
    """Layer-wise lr decay: block i of L gets lr x decay^(L + 1 - (i + 1)); the patch
    embedding, class token and positions decay^(L + 1); the final norm and head x 1 (BEiT)."""
    weight_decay: float = 0.05
    """AdamW weight decay of matrices (not of 1-D parameters, the class token or positions)."""
    drop_path: float = 0.1
    """Stochastic depth of the encoder while fine-tuning."""
    mixup_alpha: float = 0.0
    """Mixup: lambda ~ Beta(alpha, alpha); 0 = off."""
    mixup_prob: float = 1.0
    """Probability that a batch is mixed."""
    freqm: int = 0
    """SpecAugment: one frequency mask up to this many bins (of 128; scaled to the encoder)."""
    timem: int = 0
    """SpecAugment: one time mask up to this many frames."""
    mask_t_prob: float = 0.0
    """Patch-out: fraction of time columns of output tokens dropped from the encoder."""
    mask_f_prob: float = 0.0
    """Patch-out: fraction of frequency rows of output tokens dropped from the encoder."""
    balanced: bool = False
    """Draw training clips by inverse label frequency (without replacement)."""
    epoch_len: int = 0
    """Clips per epoch with balanced sampling; 0 = the training set's size."""
    clip_seconds: float = 10.0
    """Random training crop; longer clips are cut, shorter ones kept whole."""
    seed: int = 0
    """Seed of the head, the clip order, crops, mixup and masks."""
    optimizer: str = "adamw"
    """``adamw`` (Audio-MAE, AST, MaskSpec) or ``sgd`` (momentum 0.9; ATST)."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 = off (ATST: 3)."""

    def __post_init__(self):
        for keys, test, why in (
            (("optimizer",), lambda v: v in OPTIMIZERS, f"must be one of {OPTIMIZERS}"),
            (("epochs", "batch_size"), lambda v: v >= 1, "must be >= 1"),
            (("blr", "clip_seconds"), lambda v: v > 0, "must be > 0"),
            (
                ("lr", "min_lr", "warmup_epochs", "weight_decay", "grad_clip"),
                lambda v: v >= 0,
                "must be >= 0",
            ),
            (("mixup_alpha", "freqm", "timem", "epoch_len"), lambda v: v >= 0, "must be >= 0"),
            (
                ("drop_path", "mask_t_prob", "mask_f_prob"),
                lambda v: 0 <= v < 1,
                "must be in [0, 1)",
            ),
            (("mixup_prob",), lambda v: 0 <= v <= 1, "must be in [0, 1]"),
            (("layer_decay",), lambda v: 0 < v <= 1, "must be in (0, 1]"),
        ):
            check_all(self, "finetune", keys, test, why)

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr > 0 else self.blr * self.batch_size / 256


# Each protocol's values where they differ from the defaults above; the defaults are the values
# the references share (blr 1e-3, layer decay 0.75, drop path 0.1) and the folder protocol's.
# what both ATST-Frame protocols share (the comment above their rows names the sources)
ATST_FINETUNE = {
    "batch_size": 512,
    "blr": 1.0,
    "warmup_epochs": 5,
    "weight_decay": 0.0,
    "mixup_alpha": 10.0,
    "optimizer": "sgd",
    "grad_clip": 3.0,
}

PROTOCOLS: dict[str, ProtocolSettings] = {
    "audioset": ProtocolSettings(
        epochs=60,
        warmup_epochs=4,
        weight_decay=5e-4,
        mixup_alpha=0.5,
        freqm=48,
        timem=192,
        mask_t_prob=0.2,
        mask_f_prob=0.2,
        balanced=True,
    ),
    "esc50": ProtocolSettings(
        epochs=50, batch_size=64, warmup_epochs=5, freqm=24, timem=96, clip_seconds=5.0
    ),
    "speechcommands": ProtocolSettings(
        epochs=80, batch_size=64, warmup_epochs=5, mixup_alpha=0.3, clip_seconds=1.0
    ),
    "folder": ProtocolSettings(freqm=24, timem=96),
    # ATST-Frame's fine-tuning (Audio-WestlakeU/audiossl methods/atstframe/downstream/
    # train_finetune.py, model.py FineTuningPLModule; shell/downtream/finetune/eval_batch.sh:
    # 4 GPUs x 128 clips; lr per 256 clips): SGD momentum 0.9 without weight decay, gradient norm
    # clipped at 3, layer decay 0.75, mixup on every batch with alpha 10, cosine to 1e-6
    # eval_spcv2.sh: lr 1.0, 50 epochs, 5 warm-up
    "atst-speechcommands": ProtocolSettings(**ATST_FINETUNE, epochs=50, clip_seconds=1.0),
    # eval_audioset_b.sh: lr 1.0 (the first of its sweep), 200 epochs, 5 warm-up
    "atst-audioset": ProtocolSettings(**ATST_FINETUNE, epochs=200, balanced=True),
}
# the data each protocol reads, where its name is not the dataset's (``finetune/tasks.py``)
PROTOCOL_DATA = {"atst-speechcommands": "speechcommands", "atst-audioset": "audioset"}


def protocol_settings(protocol: str, overrides: list[str] = (), **fields) -> ProtocolSettings:
    """The settings of ``protocol``, then ``fields`` (None = keep), then ``key=value`` strings
    (typed, checked; unknown keys and protocols are errors naming them)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    given = {k: v for k, v in fields.items() if v is not None}
    settings = dataclasses.replace(PROTOCOLS[protocol], **given)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        set_key(settings, key, value)
    return settings
