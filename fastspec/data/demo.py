"""The built-in demo corpus: synthetic, deterministic, generated in memory.

``fastspec pretrain`` with no ``--data`` trains on this, so it must be instant (no files, no
download) and still give a spectrogram model something to learn: each clip mixes one to three
sound events drawn from six families with distinct time-frequency shapes,

- harmonic tones (a fundamental and a few partials, attack and exponential decay),
- linear and exponential chirps,
- band-limited noise bursts,
- click trains (damped sinusoid clicks at a regular rate),
- amplitude-modulated tones,
- frequency-modulated tones,

at random onsets and gains, peak-normalised to a random level in [0.1, 0.9]. Clip ``i`` is a
function of ``(seed, i)`` only, so any subset of clips, in any order and in any worker, comes
out the same.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["EVENT_KINDS", "DemoCorpus", "DemoEvalSet", "add_event"]

_TWO_PI = 2.0 * math.pi
# Event families, in the order the generator draws them.
EVENT_KINDS = ("harmonic", "chirp", "noise", "clicks", "am", "fm")


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """A frequency drawn evenly on a log axis, as pitch is perceived."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _sin_of_phase(phase: np.ndarray) -> np.ndarray:
    """``sin(phase)`` in float32 from a float64 phase.

    The phase of a 7 kHz tone reaches ~1e5 rad in two seconds; reducing it modulo 2*pi in
    float64 keeps it exact, and the sine itself is then cheap and accurate in float32.
    """
    return np.sin(np.mod(phase, _TWO_PI).astype(np.float32))


def _fade(num_samples: int, sample_rate: int, seconds: float = 0.01) -> np.ndarray:
    """A flat envelope with raised-cosine edges, so events do not start or end with a click."""
    env = np.ones(num_samples, dtype=np.float32)
    edge = min(num_samples // 2, max(1, int(seconds * sample_rate)))
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, math.pi, edge, dtype=np.float32))
    env[:edge] = ramp
    env[num_samples - edge :] = ramp[::-1]
    return env


def _attack_decay(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """A percussive envelope: linear attack of 5-80 ms, then exponential decay."""
    attack = max(1, min(num_samples, int(rng.uniform(0.005, 0.08) * sample_rate)))
    tau = rng.uniform(0.08, 0.8) * sample_rate  # decay time constant in samples
    env = np.exp(-np.arange(num_samples, dtype=np.float32) / np.float32(tau))
    env[:attack] *= np.linspace(0.0, 1.0, attack, dtype=np.float32)
    return env * _fade(num_samples, sample_rate, 0.005)


def _harmonic(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A pitched note: fundamental 80-800 Hz with 2-6 partials rolling off as k**-p."""
    f0 = _log_uniform(rng, 80.0, 800.0)
    num_partials = min(int(rng.integers(2, 7)), max(1, int(0.45 * sr / f0)))
    rolloff = rng.uniform(0.5, 2.0)
    phase = np.mod(_TWO_PI * f0 / sr * np.arange(n), _TWO_PI).astype(np.float32)
    theta, two_cos = np.sin(phase), 2.0 * np.cos(phase)
    # sin(k x) by the Chebyshev recurrence sin((k+1)x) = 2 cos(x) sin(kx) - sin((k-1)x): two
    # transcendentals per note instead of one per partial
    out = theta.copy()
    prev, cur = np.zeros_like(theta), theta
    for k in range(2, num_partials + 1):
        prev, cur = cur, two_cos * cur - prev
        out += np.float32(k**-rolloff) * cur
    return out * _attack_decay(rng, n, sr)


def _chirp(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A sweep between two frequencies in 100 Hz .. 0.4 * sr, linear or exponential in time."""
    f_start, f_end = _log_uniform(rng, 100.0, 0.4 * sr), _log_uniform(rng, 100.0, 0.4 * sr)
    t = np.arange(n) / sr
    duration = n / sr
    if rng.random() < 0.5 or abs(f_end / f_start - 1.0) < 1e-3:
        phase = _TWO_PI * (f_start * t + (f_end - f_start) * t * t / (2.0 * duration))
    else:
        # f(t) = f_start * (f_end / f_start) ** (t / T); the phase is its integral
        log_ratio = math.log(f_end / f_start)
        phase = _TWO_PI * f_start * duration / log_ratio * np.expm1(log_ratio * t / duration)
    return _sin_of_phase(phase) * _fade(n, sr)


def _noise_burst(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """White noise band-passed (in the FFT domain) to a band 1.3-4x wide, percussive or steady."""
    low = _log_uniform(rng, 50.0, 0.3 * sr)
    high = min(0.45 * sr, low * rng.uniform(1.3, 4.0))
    spectrum = np.fft.rfft(rng.standard_normal(n).astype(np.float32))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spectrum[(freqs < low) | (freqs > high)] = 0.0
    noise = np.fft.irfft(spectrum, n).astype(np.float32)
    noise /= np.abs(noise).max() + 1e-12
    env = _attack_decay(rng, n, sr) if rng.random() < 0.5 else _fade(n, sr)
    return noise * env


def _clicks(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A train of 2-40 clicks per second; each click a damped sinusoid of 1-5 ms decay."""
    rate = rng.uniform(2.0, 40.0)
    freq = _log_uniform(rng, 500.0, 0.4 * sr)
    tau = rng.uniform(0.001, 0.005) * sr
    click_len = min(n, int(5 * tau) + 1)
    k = np.arange(click_len)
    click = (np.exp(-k / tau) * np.sin(_TWO_PI * freq / sr * k)).astype(np.float32)
    period = sr / rate
    # slight timing jitter (up to 5 % of the period) keeps the train natural but regular
    starts = np.arange(rng.uniform(0, period), n, period)
    starts = starts + rng.uniform(-0.05, 0.05, starts.size) * period
    out = np.zeros(n, dtype=np.float32)
    for start in np.clip(starts, 0, n - 1).astype(np.int64):
        stop = min(n, start + click_len)
        out[start:stop] += click[: stop - start]
    return out


def _am_tone(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A tone at 150-4000 Hz with its amplitude modulated at 2-30 Hz, depth 0.3-1."""
    carrier = _log_uniform(rng, 150.0, 4000.0)
    mod_rate, depth = rng.uniform(2.0, 30.0), rng.uniform(0.3, 1.0)
    index = np.arange(n)
    modulator = 1.0 + depth * _sin_of_phase(_TWO_PI * mod_rate / sr * index + rng.uniform(0, 7))
    return _sin_of_phase(_TWO_PI * carrier / sr * index) * modulator * _fade(n, sr)


def _fm_tone(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A tone at 200-3000 Hz, frequency modulated at 2-200 Hz with up to 30 % deviation."""
    carrier = _log_uniform(rng, 200.0, 3000.0)
    mod_rate = _log_uniform(rng, 2.0, 200.0)
    # modulation index beta = deviation / mod_rate; capping the deviation at 0.3 * carrier keeps
    # the instantaneous frequency positive and below Nyquist
    beta = rng.uniform(0.05, 0.3) * carrier / mod_rate
    index = np.arange(n)
    phase = _TWO_PI * carrier / sr * index + beta * np.sin(_TWO_PI * mod_rate / sr * index)
    return _sin_of_phase(phase) * _fade(n, sr)


_GENERATORS = (_harmonic, _chirp, _noise_burst, _clicks, _am_tone, _fm_tone)


class DemoCorpus:
    """A synthetic corpus with the same interface as :class:`fastspec.data.FileSource`.

    Args:
        num_clips: number of clips (``len``).
        sample_rate: rate of the generated audio in Hz.
        clip_seconds: length of every clip.
        seed: corpus seed; clip ``i`` depends only on ``(seed, i)``.

    ``load(i)`` returns ``(wave, sample_rate)`` with ``wave`` float32 ``[round(clip_seconds *
    sample_rate)]``, finite, peak in [0.1, 0.9]. Generating a clip takes about a millisecond.
    """

    def __init__(
        self,
        num_clips: int = 384,
        sample_rate: int = 16000,
        clip_seconds: float = 2.0,
        seed: int = 0,
    ):
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        if sample_rate < 1000:
            raise ValueError(f"sample_rate must be >= 1000 Hz, got {sample_rate}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_clips = int(num_clips)
        self.sample_rate = int(sample_rate)
        self.clip_seconds = float(clip_seconds)
        self.seed = int(seed)
        self.clip_samples = round(self.clip_seconds * self.sample_rate)
        if self.clip_samples < int(0.1 * self.sample_rate):
            raise ValueError(f"clip_seconds must be >= 0.1, got {clip_seconds}")
        self.skipped: list[tuple[str, str]] = []  # nothing is ever skipped; kept for the interface

    def __len__(self) -> int:
        return self.num_clips

    def __repr__(self) -> str:
        return (
            f"DemoCorpus(num_clips={self.num_clips}, sample_rate={self.sample_rate}, "
            f"clip_seconds={self.clip_seconds:g}, seed={self.seed})"
        )

    def name(self, index: int) -> str:
        """A stable name for clip ``index``, used in logs like a file name."""
        return f"demo-{self.seed}-{self._check(index):05d}"

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """``(wave float32 [clip_samples], sample_rate)`` for clip ``index``."""
        return self._generate(self._check(index)), self.sample_rate

    def _check(self, index: int) -> int:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip index {index} out of range for {self!r}")
        return int(index)

    def _generate(self, index: int) -> np.ndarray:
        # SeedSequence mixes the pair, so (seed, i) and (seed + 1, i - 1) are unrelated streams
        rng = np.random.default_rng([self.seed, index])
        clip = np.zeros(self.clip_samples, dtype=np.float32)
        for _ in range(int(rng.integers(1, 4))):
            add_event(rng, clip, int(rng.integers(len(_GENERATORS))), self.sample_rate)
        return _normalise(rng, clip)


def add_event(
    rng: np.random.Generator, clip: np.ndarray, family: int, sample_rate: int, level: float = 1.0
) -> None:
    """Add one event of ``EVENT_KINDS[family]`` in place, 15-100 % of the clip long (at least
    0.1 s) at a random onset, its peak at ``level`` times a log-uniform gain in [0.3, 1]."""
    n, sr = clip.shape[0], sample_rate
    length = max(int(0.1 * sr), int(rng.uniform(0.15, 1.0) * n))
    onset = int(rng.integers(0, n - length + 1))
    event = _GENERATORS[family](rng, length, sr)
    gain = np.float32(level * _log_uniform(rng, 0.3, 1.0) / (np.abs(event).max() + 1e-12))
    clip[onset : onset + length] += gain * event


def _normalise(rng: np.random.Generator, clip: np.ndarray) -> np.ndarray:
    """Peak-normalise ``clip`` in place to a random level in [0.1, 0.9]."""
    level = rng.uniform(0.1, 0.9)
    clip *= np.float32(level / np.abs(clip).max())
    return clip


class DemoEvalSet(DemoCorpus):
    """A labelled evaluation set drawn from the demo generator's own sound families.

    Clip ``i`` holds one event of family ``EVENT_KINDS[i % 6]`` (so the classes are balanced)
    over a quieter background event of another family, ``background`` times the level (0: none),
    and is labelled with the first family. Its random stream is ``(seed, i, 1)``: a sequence
    of a different length from the pretraining corpus' ``(seed, i)``, so no evaluation clip
    is ever a pretraining clip, whatever the seeds. The interface is that of a labelled source
    (:class:`fastspec.data.LabeledSource`): ``class_names``, ``labels(i)``, ``label(i)``,
    ``targets()``, ``multilabel``.

    Args:
        num_clips: number of clips (``len``).
        background: level of the background event relative to the labelled one, in [0, 1).
        corpus: ``sample_rate``, ``clip_seconds``, ``seed``, as :class:`DemoCorpus`.
    """

    labeled = True
    multilabel = False

    def __init__(self, num_clips: int = 240, *, background: float = 0.3, **corpus):
        super().__init__(num_clips, **corpus)
        if not 0.0 <= background < 1.0:
            raise ValueError(f"background must be in [0, 1), got {background}")
        self.background = float(background)
        self.class_names = list(EVENT_KINDS)

    def __repr__(self) -> str:
        return super().__repr__().replace("DemoCorpus(", "DemoEvalSet(")[:-1] + (
            f", background={self.background:g})"
        )

    def name(self, index: int) -> str:
        return (
            f"demo-eval-{self.seed}-{self._check(index):05d}-{self.class_names[self.label(index)]}"
        )

    def label(self, index: int) -> int:
        """Class index (into ``class_names``) of clip ``index``."""
        return self._check(index) % len(EVENT_KINDS)

    def labels(self, index: int) -> tuple[int, ...]:
        return (self.label(index),)

    def targets(self) -> np.ndarray:
        """float32 [N, C] one-hot targets."""
        out = np.zeros((self.num_clips, len(EVENT_KINDS)), dtype=np.float32)
        out[np.arange(self.num_clips), np.arange(self.num_clips) % len(EVENT_KINDS)] = 1.0
        return out

    def _generate(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index, 1])
        family = self.label(index)
        clip = np.zeros(self.clip_samples, dtype=np.float32)
        add_event(rng, clip, family, self.sample_rate)
        if self.background > 0:
            # a different family: the label stays unambiguous
            other = (family + 1 + int(rng.integers(len(EVENT_KINDS) - 1))) % len(EVENT_KINDS)
            add_event(rng, clip, other, self.sample_rate, level=self.background)
        return _normalise(rng, clip)
