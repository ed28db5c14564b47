"""Front-end settings: :class:`FrontendConfig`, the paper presets, and frame counting.

A config holds concrete numbers only (samples, not milliseconds; ``n_fft`` and ``f_max`` resolved),
so that ``to_dict`` / ``from_dict`` round-trip exactly and an exported encoder records precisely
the features it was trained on. Presets that are defined in milliseconds (Kaldi) convert to
samples from the possibly overridden ``sample_rate`` in :func:`get_preset`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from fastspec._logging import notice_once
from fastspec.kernels.reference import WINDOW_KINDS, LogScale, frame_count

__all__ = ["FrontendConfig", "get_preset", "list_presets", "num_frames", "read_stats_file"]

# float32 machine epsilon, 2 ** -23: Kaldi's (and torchaudio.compliance.kaldi's) log floor
FLOAT32_EPS = 1.1920928955078125e-07

_CHOICES = {
    "window": WINDOW_KINDS,
    "pad_mode": ("reflect", "constant"),
    "mel_scale": ("kaldi", "htk"),
    "log": ("ln", "db"),
    "norm": ("mean_std", "min_max", "per_bin", "none"),
    "precision": ("ieee", "tf32", "tf32x3", "bf16x3", "bf16x6"),
}


@dataclass(frozen=True)
class FrontendConfig:
    """Every setting of the log-mel front end. Defaults are the ``kaldi`` preset at 16 kHz.

    Frozen (hashable): the front end caches its device constants per config.
    """

    sample_rate: int = 16000
    """Sample rate of the input waveform in Hz; features are only valid at this rate."""
    win_length: int = 400
    """Window length in samples (Kaldi: 25 ms)."""
    hop_length: int = 160
    """Frame shift in samples (10 ms at 16 kHz)."""
    n_fft: int | None = None
    """FFT size (even, >= win_length). None: the next power of two >= win_length (Kaldi's
    round_to_power_of_two)."""
    window: str = "hann"
    """Window kind: hann | hamming | povey | rectangular."""
    periodic_window: bool = False
    """False: symmetric window (Kaldi "hanning", denominator N - 1); True: periodic (torch)."""
    center: bool = False
    """False: Kaldi snip_edges=True framing, frames fully inside the clip, T = 1 + (S - win) //
    hop (0 when S < win), each frame zero-padded on the right to n_fft. True: torch.stft
    center=True, the clip padded by n_fft // 2 on both sides, T = 1 + S // hop, window centred in
    n_fft."""
    pad_mode: str = "reflect"
    """Padding for center=True: reflect (mirrored at each clip's own length) or constant (zeros)."""
    remove_dc: bool = True
    """Subtract each frame's mean before pre-emphasis (Kaldi remove_dc_offset)."""
    preemphasis: float = 0.97
    """Pre-emphasis y[n] = x[n] - a x[n-1], y[0] = (1 - a) x[0], after DC removal; 0 disables."""
    signal_preemphasis: float = 0.0
    """Pre-emphasis of the whole clip before framing, ``y[n] = x[n + 1] - a x[n]``: one sample
    shorter, as MaskSpec's ``conv1d`` with kernel ``[-a, 1]``; 0 disables. Applied to the
    waveform ahead of every backend (``fastspec.frontend.op``)."""
    power: float = 2.0
    """Spectrum exponent: 2 (power spectrum) or 1 (magnitude)."""
    n_mels: int = 128
    """Number of mel filters (output features per frame)."""
    f_min: float = 20.0
    """Low edge of the lowest filter in Hz."""
    f_max: float | None = None
    """High edge of the highest filter in Hz; None: Nyquist (sample_rate / 2)."""
    mel_scale: str = "kaldi"
    """kaldi: 1127 ln(1 + f/700), triangles linear in mel over n_fft // 2 bins, Nyquist weight 0
    (torchaudio.compliance.kaldi). htk: 2595 log10(1 + f/700), triangles linear in Hz over all
    bins, no area normalisation (torchaudio MelScale norm=None, librosa htk=True norm=None)."""
    log: str = "ln"
    """ln: natural log (Kaldi fbank); db: 10 log10 (torchaudio AmplitudeToDB stype="power")."""
    log_floor: float = FLOAT32_EPS
    """Mel energies are floored here before the log (Kaldi: float32 epsilon; AmplitudeToDB amin
    1e-10)."""
    log_offset: float = 0.0
    """Added to the mel energies before the floor and the log: ``ln(max(mel + log_offset,
    log_floor))`` (MaskSpec: log(x + 1e-5)). Only the torch backend computes a non-zero offset;
    the others fall back to it with a one-line notice."""
    top_db: float | None = None
    """If set, each clip is clamped below at (its max over its valid frames) - top_db, in the units
    of ``log``, before normalisation (AmplitudeToDB top_db)."""
    norm: str = "mean_std"
    """Normalisation applied when normalize=True: mean_std: (x - norm_mean) / (norm_std_scale *
    norm_std); min_max: 2 (x - norm_min) / (norm_max - norm_min) - 1; per_bin: (x -
    norm_mean_bins[f]) / norm_std_bins[f] per mel bin f (mean 0, std 1 where None); none."""
    norm_mean: float = -4.2677393
    """Dataset mean of the log-mel (AST's AudioSet value)."""
    norm_std: float = 4.5689974
    """Dataset standard deviation of the log-mel (AST's AudioSet value)."""
    norm_std_scale: float = 2.0
    """AST divides by twice the std so most features land in [-1, 1]."""
    norm_min: float = -79.6482
    """min_max lower constant (ATST's MinMax, dB)."""
    norm_max: float = 50.6842
    """min_max upper constant (ATST's MinMax, dB)."""
    norm_mean_bins: tuple[float, ...] | None = None
    """per_bin: the mean of each mel bin (n_mels values, e.g. from ``fastspec stats``)."""
    norm_std_bins: tuple[float, ...] | None = None
    """per_bin: the standard deviation of each mel bin (n_mels values > 0)."""
    precision: str = "ieee"
    """Matmul precision of the Triton backend (GPU): ieee (fp32 FMA, no tensor cores), bf16x6
    (split bf16, 6 products: the accurate tensor-core mode, more accurate than fp32 torch),
    tf32x3 (split tf32, about as accurate as ieee), bf16x3 (the fast mode: ~1e-2 ln max, 1e-4
    mean on real-like audio), tf32 (whole log units off in quiet bins; experiments only). See
    benchmarks/results/frontend-precision.md for the measured errors. The C++ and torch backends always compute
    in fp32 (torch: fp64 for fp64 input)."""
    check_finite: bool = True
    """Raise ValueError on NaN/inf in the valid samples (and on lengths outside [0, S]). The
    Triton kernel and the C++ code scan the samples in their own pass; on GPU the result costs
    one host sync per call, so turn this off for CUDA-graph capture."""

    def __post_init__(self):
        # the type checks follow the annotations (strings, from __future__): every field
        # annotated int, float or bool, alone or ``| None``, is checked without a second list
        annotated: dict[str, list[str]] = {}
        for field in dataclasses.fields(self):
            annotated.setdefault(field.type.removesuffix(" | None"), []).append(field.name)
        errors = []
        for name in annotated["int"]:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                errors.append(f"{name} must be an int, got {value!r}")
        for name in annotated["float"]:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                errors.append(f"{name} must be a number, got {value!r}")
            else:
                # ints become floats so that from_dict(to_dict()) compares equal field by field
                object.__setattr__(self, name, float(value))
        for name in annotated["bool"]:
            if not isinstance(getattr(self, name), bool):
                errors.append(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                errors.append(f"{name}={getattr(self, name)!r} is not one of {choices}")
        for name in ("norm_mean_bins", "norm_std_bins"):
            errors += self._check_bins(name)
        if errors:
            raise ValueError("invalid FrontendConfig: " + "; ".join(errors))

        if self.n_fft is None:
            object.__setattr__(self, "n_fft", 1 << (self.win_length - 1).bit_length())
        if self.f_max is None:
            object.__setattr__(self, "f_max", self.sample_rate / 2.0)
        nyquist = self.sample_rate / 2.0
        checks = [
            (self.sample_rate > 0, f"sample_rate={self.sample_rate} must be > 0"),
            (self.win_length >= 2, f"win_length={self.win_length} must be >= 2"),
            (self.hop_length >= 1, f"hop_length={self.hop_length} must be >= 1"),
            (
                self.n_fft >= self.win_length and self.n_fft % 2 == 0,
                f"n_fft={self.n_fft} must be even and >= win_length={self.win_length}",
            ),
            (0.0 <= self.preemphasis <= 1.0, f"preemphasis={self.preemphasis} not in [0, 1]"),
            (
                0.0 <= self.signal_preemphasis <= 1.0,
                f"signal_preemphasis={self.signal_preemphasis} not in [0, 1]",
            ),
            (self.power in (1.0, 2.0), f"power={self.power} must be 1 or 2"),
            (self.n_mels >= 1, f"n_mels={self.n_mels} must be >= 1"),
            (
                0.0 <= self.f_min < self.f_max <= nyquist,
                f"need 0 <= f_min={self.f_min} < f_max={self.f_max} <= Nyquist={nyquist}",
            ),
            (self.log_floor > 0.0, f"log_floor={self.log_floor} must be > 0"),
            (self.log_offset >= 0.0, f"log_offset={self.log_offset} must be >= 0"),
            (
                self.norm_std_bins is None or min(self.norm_std_bins) > 0,
                "norm_std_bins must all be > 0",
            ),
            (self.top_db is None or self.top_db > 0, f"top_db={self.top_db} must be > 0"),
            (self.norm_std > 0 and self.norm_std_scale > 0, "norm_std, norm_std_scale must be > 0"),
            (self.norm_max > self.norm_min, f"norm_max={self.norm_max} <= norm_min"),
        ]
        bad = [message for ok, message in checks if not ok]
        if bad:
            raise ValueError("invalid FrontendConfig: " + "; ".join(bad))

    def _check_bins(self, name: str) -> list[str]:
        """Turn a per-bin sequence (list, tuple, array) into a tuple of n_mels floats."""
        value = getattr(self, name)
        if value is None:
            return []
        try:
            values = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            return [f"{name} must be a sequence of numbers, got {type(value).__name__}"]
        if len(values) != self.n_mels or not all(math.isfinite(v) for v in values):
            return [f"{name} must hold n_mels={self.n_mels} finite numbers, got {len(values)}"]
        object.__setattr__(self, name, values)
        return []

    # ----- derived values -------------------------------------------------------------------

    @property
    def frame_length(self) -> int:
        """Samples read per frame: win_length (Kaldi framing) or n_fft (center=True)."""
        return self.n_fft if self.center else self.win_length

    @property
    def log_mult(self) -> float:
        """Multiplier applied to ln(.): 1 for ln, 10 / ln(10) for dB."""
        return 1.0 if self.log == "ln" else 10.0 / math.log(10.0)

    @property
    def log_scale(self) -> LogScale:
        """How mel energies become log-mel, for the torch reference and the kernel plan."""
        return LogScale(self.power, self.log_floor, self.log_mult, self.top_db)

    def norm_affine(self, normalize: bool = True) -> tuple[float, float]:
        """``(mul, add)`` such that the normalised feature is ``x * mul + add``."""
        if not normalize or self.norm in ("none", "per_bin"):  # per_bin: see bin_affine
            return 1.0, 0.0
        if self.norm == "mean_std":
            mul = 1.0 / (self.norm_std_scale * self.norm_std)
            return mul, -self.norm_mean * mul
        mul = 2.0 / (self.norm_max - self.norm_min)
        return mul, -self.norm_min * mul - 1.0

    def bin_affine(self, normalize: bool = True) -> tuple[list[float], list[float]] | None:
        """per_bin: ``(mul [n_mels], add [n_mels])`` applied after ``norm_affine`` (which is then
        the identity), else None."""
        if not normalize or self.norm != "per_bin":
            return None
        mean = self.norm_mean_bins or (0.0,) * self.n_mels
        std = self.norm_std_bins or (1.0,) * self.n_mels
        return [1.0 / s for s in std], [-m / s for m, s in zip(mean, std)]

    # ----- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field (ints, floats, bools, strings, None, float lists)."""
        data = dataclasses.asdict(self)
        for name in ("norm_mean_bins", "norm_std_bins"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrontendConfig:
        """Inverse of :meth:`to_dict`. Unknown keys are an error; missing keys take defaults."""
        reject_unknown(data, "FrontendConfig.from_dict")
        return cls(**data)


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(FrontendConfig))


def reject_unknown(keys, where: str) -> None:
    unknown = sorted(set(keys) - set(_FIELD_NAMES))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {list(_FIELD_NAMES)}")


# Each preset: fixed field values, plus fields given in milliseconds (converted with the final
# sample rate, truncating like torchaudio.compliance.kaldi's int(sr * ms * 0.001)).
_PRESETS: dict[str, tuple[dict[str, Any], dict[str, float]]] = {
    # torchaudio.compliance.kaldi.fbank(htk_compat=True, use_energy=False, window_type="hanning",
    # num_mel_bins=128, dither=0.0, frame_shift=10) as AST, Audio-MAE and ASiT call it, then
    # AST's (x + 4.2677393) / (2 * 4.5689974)
    "kaldi": ({}, {"win_length": 25.0, "hop_length": 10.0}),
    # the same fbank at 32 kHz, as ASiT computes it (Sara-Ahmed/ASiT data_transformations.py,
    # SAMPLE_RATE = 32000): 800-sample window, 320-sample hop, 1024-point FFT, 0-16 kHz of mel
    "kaldi32k": ({"sample_rate": 32000}, {"win_length": 25.0, "hop_length": 10.0}),
    # ATST: MelSpectrogram(16000, n_fft=1024, win_length=1024, hop_length=160, f_min=60,
    # f_max=7800, n_mels=64) -> AmplitudeToDB(stype="power", top_db=80) ->
    # MinMax(min=-79.6482, max=50.6842) (audiossl/methods/atst*/transform.py)
    "atst": (
        {
            "win_length": 1024,
            "hop_length": 160,
            "n_fft": 1024,
            "window": "hann",
            "periodic_window": True,
            "center": True,
            "pad_mode": "reflect",
            "remove_dc": False,
            "preemphasis": 0.0,
            "power": 2.0,
            "n_mels": 64,
            "f_min": 60.0,
            "f_max": 7800.0,
            "mel_scale": "htk",
            "log": "db",
            "log_floor": 1e-10,
            "top_db": 80.0,
            "norm": "min_max",
        },
        {},
    ),
    # MaskSpec (WangHelin1997/MaskSpec models/models_mae.py, AugmentMelSTFT as
    # MaskedAutoencoderViT builds it): 32 kHz; the whole clip pre-emphasised by conv1d [-0.97, 1]
    # (one sample shorter); torch.stft n_fft 1024, hop 320, symmetric Hann window of 800
    # (periodic=False) centred in the FFT, centred reflect-padded frames; power spectrum;
    # torchaudio.compliance.kaldi.get_mel_banks 128 bins from 0 Hz to 15 kHz (sr / 2 -
    # fmax_aug_range / 2, its evaluation range), Nyquist weight 0; ln(x + 1e-5); each mel bin
    # normalised by its own mean / std (``fastspec stats``; read with read_stats_file). The
    # reference's (x + 4.5) / 5 before its per-bin statistics is the same affine folded into them.
    "maskspec": (
        {
            "sample_rate": 32000,
            "win_length": 800,
            "hop_length": 320,
            "n_fft": 1024,
            "periodic_window": False,
            "center": True,
            "remove_dc": False,
            "preemphasis": 0.0,
            "signal_preemphasis": 0.97,
            "f_min": 0.0,
            "f_max": 15000.0,
            "mel_scale": "kaldi",
            "log_offset": 1e-5,
            "norm": "per_bin",
        },
        {},
    ),
}


def list_presets() -> list[str]:
    """Names accepted by :func:`get_preset`."""
    return sorted(_PRESETS)


def get_preset(name: str, **overrides) -> FrontendConfig:
    """The config of preset ``name`` with ``overrides`` (any FrontendConfig field) applied.

    Settings the preset defines in milliseconds follow an overridden ``sample_rate`` unless they
    are overridden themselves; ``n_fft`` and ``f_max`` follow it when the preset leaves them
    derived (Kaldi: next power of two, Nyquist).
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown front-end preset {name!r}; valid presets: {list_presets()}")
    reject_unknown(overrides, f"get_preset({name!r})")
    fixed, in_ms = _PRESETS[name]
    pinned = fixed.get("sample_rate")
    if pinned is not None and overrides.get("sample_rate", pinned) != pinned:
        raise ValueError(
            f"front-end preset {name!r} is defined at sample_rate={pinned}, got "
            f"sample_rate={overrides['sample_rate']}; resample the audio or choose another preset"
        )
    values = {**fixed, **overrides}
    sample_rate = values.get("sample_rate", FrontendConfig.sample_rate)
    for field, ms in in_ms.items():
        if field not in overrides:
            values[field] = int(sample_rate * ms * 0.001)
    cfg = FrontendConfig(**values)
    if cfg.norm == "per_bin" and cfg.norm_mean_bins is None and cfg.norm_std_bins is None:
        notice_once(
            f"frontend.{name}.stats",
            f"front end: preset {name!r} without a statistics file (fastspec stats DATA); "
            "normalising each mel bin with mean 0, std 1",
        )
    return cfg


def read_stats_file(path, n_mels: int | None = None) -> dict[str, list[float]]:
    """``{"norm_mean_bins": [...], "norm_std_bins": [...]}`` from a ``fastspec stats`` file, to
    pass to :func:`get_preset` / ``LogMel``; ``n_mels`` (when given) must match the file's."""
    try:
        with open(path) as f:
            doc = json.load(f)
        mean, std = doc["mean"], doc["std"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"statistics file {path}: not a fastspec stats file ({exc})") from None
    if doc.get("format") != "fastspec-stats" or len(mean) != len(std):
        raise ValueError(f"statistics file {path}: not a fastspec stats file")
    if n_mels is not None and len(mean) != n_mels:
        raise ValueError(
            f"statistics file {path}: {len(mean)} mel bins, the front end has {n_mels}"
        )
    return {"norm_mean_bins": [float(v) for v in mean], "norm_std_bins": [float(v) for v in std]}


def num_frames(num_samples, cfg: FrontendConfig):
    """Frames produced from ``num_samples`` samples (int, or int Tensor of any shape).

    0 for clips shorter than one window with Kaldi framing (``center=False``). A clip
    pre-emphasised as a whole (``signal_preemphasis``) loses one sample first.
    """
    if cfg.signal_preemphasis:
        shorter = num_samples - 1
        num_samples = max(shorter, 0) if isinstance(shorter, int) else shorter.clamp(0)
    return frame_count(num_samples, cfg.frame_length, cfg.hop_length, cfg.center)
