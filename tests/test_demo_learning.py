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
maskspec 34.2 vs 30.0, asit 33.3 vs 30.0, atst-frame 40.0 vs 36.7, atst-clip 35.8 vs 36.7
(xfail). Each case took 1.5-4 min on the shared, overloaded 2-core machine (all four: 10 min).

Noise: 120 clips is a small evaluation. The same maskspec encoder scores +4.2 points over its
init here and +1.1 on 360 held-out clips (``demo:360``); ATST-Clip runs that differ only in lr
moved by up to 6 points between the two. A pass here is evidence, not proof, of learning.

Why the BYOL recipes did not learn (both were xfail): the exported encoder is the EMA teacher
(as ATST evaluates), and at momentum 0.99, rising to 1 over 60 steps, the teacher moves about a
quarter of the way from its random init: its probe equalled random init's (36.7 vs 36.7) while
the student's was 3 points higher. ``ATST_DEMO`` now uses momentum 0.9 and blr 0.02
(``fastspec.recipes.byol``), and atst-frame beats its init. No collapse: the teacher's clip
embeddings spread as much as random init's (normalised std 0.40-0.46 vs 0.39), the BYOL loss
levels at 0.4-0.7. ATST-Clip still does not (xfail): at 300 steps of 32 clips it falls 5 points
below its init on 360 clips, at 150 steps of 16 it is 1.7 above, 2.2 without the random resize
crop; its clip-level invariances (time and frequency rescaled by 0.6-1.5, log-mixup-exp) seem to
discard the pitch and modulation-rate cues that tell the demo families apart.

That hypothesis did not hold at this test's length (60 steps of 16, 360 clips, 3 folds, the
seed-0 random init 41.1 %, pretrained minus random): the demo settings +2.2 (seed 0) and -0.6
(seed 1); no resize crop +1.4 / -0.8; resize crop narrowed to 0.9-1.1 +1.4; no mixup 0.0;
neither +0.3; 1 s crops -1.1; momentum 0.5 -0.8, 0.99 -1.1; blr 0.005 -2.5, 0.08 -1.1; BYOL on
the token mean instead of the class token -3.1. All within the probe's noise (folds differ by
up to 12 points): no setting tried beats random init reliably, so the case stays xfail.
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
    reason="ATST-Clip does not beat random init on the demo families (see the module docstring)",
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
