"""Error of each Triton precision mode against float64, by emulation (runs on any CPU).

``python benchmarks/frontend_precision.py`` prints a table and writes
``benchmarks/results/frontend-precision.json``. The Triton interpreter computes every
``input_precision`` in fp32, so the tensor-core modes are measured by emulating their operand
rounding exactly (``kernels.reference.dot_emulated``) on the kernel's own math: raw frames times
the folded DC / pre-emphasis / window / DFT basis, power, times the mel filter bank, log.

Inputs, all 16 kHz float32:

- ``bench``: the benchmark batch (noise, chirps and tone pairs over a -40 dB floor), 8 x 2 s;
- ``demo16``: 8 clips of the demo corpus (harmonic tones, chirps, noise bursts, clicks, AM / FM
  with silences between events) stored as 16-bit PCM, as a WAV file would hold them: the
  closest to recorded sound that ships with the package;
- ``demo``: the same in float32, with exponential decays far below any recording's noise floor
  (bins 100+ dB down, where float32 itself is off: compare the modes with ``ieee``, not zero);
- ``quiet``: the bench batch at -40 dBFS, over a -100 dB floor: 60 dB more dynamic range
  inside each frame, where split modes lose most.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from fastspec.kernels import reference as ref

from fastspec.frontend import get_preset, logmel_reference

PRECISIONS = ("ieee", "tf32x3", "bf16x6", "bf16x3", "tf32")  # fastest last but one
RESULTS = Path(__file__).resolve().parent / "results" / "frontend-precision.json"


def emulated_logmel(wave: torch.Tensor, cfg, precision: str) -> torch.Tensor:
    """Unnormalised log-mel ``[B, T, n_mels]`` of float32 ``wave [B, S]`` (no padding), computed
    as the Triton kernel does it with ``input_precision=precision``."""
    window = ref.window_ref(
        cfg.window, cfg.win_length, cfg.periodic_window, cfg.frame_length, dtype=torch.float64
    )
    basis_re, basis_im = ref.frame_spectrum_basis(window, cfg.n_fft, cfg.remove_dc, cfg.preemphasis)
    build = ref.kaldi_mel_banks if cfg.mel_scale == "kaldi" else ref.htk_mel_banks
    mel_fb = build(
        cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.f_min, cfg.f_max, dtype=torch.float64
    ).float()
    frames = ref.frame_signal_ref(wave, None, cfg.frame_length, cfg.hop_length, cfg.center)
    frames = frames.reshape(-1, cfg.frame_length).float()
    re = ref.dot_emulated(frames, basis_re.float(), precision)
    im = ref.dot_emulated(frames, basis_im.float(), precision)
    mel = ref.dot_emulated(re * re + im * im, mel_fb, precision)
    out = torch.log(torch.clamp_min(mel, cfg.log_floor)) * cfg.log_mult
    out = out.reshape(wave.shape[0], -1, cfg.n_mels)
    if cfg.top_db is not None:
        out = torch.maximum(out, out.amax(dim=(1, 2), keepdim=True) - cfg.top_db)
    return out


def inputs() -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_frontend import _make_batch

    from fastspec.data import DemoCorpus

    bench = _make_batch(8, 2.0)
    corpus = DemoCorpus(seed=0)
    demo = [torch.from_numpy(np.asarray(corpus.load(i)[0], dtype=np.float32)) for i in range(8)]
    length = min(x.numel() for x in demo)
    rng = torch.Generator().manual_seed(0)
    quiet = 0.01 * bench + 1e-5 * torch.randn(bench.shape, generator=rng)
    demo = torch.stack([x[:length] for x in demo])
    demo16 = torch.round(demo * 32767).clamp(-32768, 32767) / 32768.0
    return {"bench": bench, "demo16": demo16, "demo": demo, "quiet": quiet}


def measure(precisions=PRECISIONS, presets=("kaldi", "atst")) -> list[dict]:
    rows = []
    for name, wave in inputs().items():
        for preset in presets:
            cfg = get_preset(preset)
            expected = logmel_reference(wave.double(), None, cfg, normalize=False)
            # the float32 torch backend (FFT): the error any float32 front end starts from
            baseline = logmel_reference(wave, None, cfg, normalize=False, dtype=torch.float32)
            for precision in ("torch-fp32", *precisions):
                if precision == "torch-fp32":
                    got = baseline
                else:
                    got = emulated_logmel(wave, cfg, precision)
                err = (got.double() - expected).abs()
                rows.append(
                    dict(
                        input=name,
                        preset=preset,
                        precision=precision,
                        units="ln" if cfg.log == "ln" else "dB",
                        err_max=err.max().item(),
                        err_mean=err.mean().item(),
                        err_p999=err.flatten().kthvalue(int(0.999 * err.numel())).values.item(),
                    )
                )
    return rows


def main() -> None:
    rows = measure()
    print(f"{'input':<6} {'preset':<6} {'precision':<10} {'max':>9} {'p99.9':>9} {'mean':>9}")
    for r in rows:
        print(
            f"{r['input']:<6} {r['preset']:<6} {r['precision']:<10} {r['err_max']:>9.2e} "
            f"{r['err_p999']:>9.2e} {r['err_mean']:>9.2e}  {r['units']}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
