"""The HEAR API (hearbenchmark.com/hear-api.html) for an exported fastspec encoder.

::

    import fastspec.hear as hear

    model = hear.load_model("runs/maskspec-demo")           # run dir, .safetensors or .json
    scene = hear.get_scene_embeddings(audio, model)          # [n_sounds, D] float32
    emb, t_ms = hear.get_timestamp_embeddings(audio, model)  # [n_sounds, T, D], [n_sounds, T]

``audio`` is ``[n_sounds, n_samples]`` float32 mono in [-1, 1] at ``model.sample_rate``, any
length. Outputs are float32 on the device of ``audio``; the work runs on the model's device.

Scene embeddings are the encoder's clip embeddings (mean of its patch tokens). Timestamp
embeddings: one output token spans ``frames_per_token`` front-end hops (160 ms for 16-frame
patches at a 10 ms hop), coarser than the 50 ms HEAR suggests for onset tolerance. So the
encoder runs ``n_shifts`` times, on the audio delayed by ``k * hop`` (``k < n_shifts``, zeros in
front, ``hop = token hop / n_shifts``, a whole number of front-end frames), and the passes are
interleaved: each embedding is the frame embedding of the token centred on its timestamp, and
timestamps lie on one regular grid, from the first token centre at or after 0 ms to the last one
at or before the end of the clip (at least one per clip: a clip shorter than the first centre
gets one embedding, stamped at its middle). The default ``hop_ms`` is the largest
such hop <= 50 ms (40 ms for 16-frame patches at 10 ms: 4 passes).
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor, nn

from fastspec.encoder import Encoder, load_encoder

__all__ = ["HearModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]

# HEAR's suggested upper bound on the timestamp hop: the onset tolerance of its music tasks
SUGGESTED_HOP_MS = 50.0


class HearModel(nn.Module):
    """An :class:`~fastspec.encoder.Encoder` with the attributes the HEAR API asks for.

    Args:
        encoder: the loaded encoder (its ``frontend`` and ``frames`` are used as they are).
        hop_ms: timestamp hop in ms; must split one token into a whole number of front-end
            frames. None: the largest such hop <= 50 ms.
        batch_size: sounds encoded per forward pass (bounds memory on long batches).
    """

    def __init__(self, encoder: Encoder, hop_ms: float | None = None, batch_size: int = 32):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder = encoder
        self.sample_rate = int(encoder.sample_rate)
        self.scene_embedding_size = int(encoder.pooled_dim)
        self.timestamp_embedding_size = int(encoder.embed_dim)
        self.batch_size = int(batch_size)
        frame_hop = encoder.frontend.hop_length  # samples per front-end frame
        pt = encoder.frames_per_token
        self.token_hop_ms = 1000.0 * pt * frame_hop / self.sample_rate
        # candidate pass counts: n divides the token's frames, so each delay is whole frames
        allowed = {n: self.token_hop_ms / n for n in range(1, pt + 1) if pt % n == 0}
        if hop_ms is None:
            fits = [n for n, hop in allowed.items() if hop <= SUGGESTED_HOP_MS]
            self.n_shifts = min(fits) if fits else pt
        else:
            matches = [n for n, hop in allowed.items() if math.isclose(hop, hop_ms)]
            if not matches:
                choices = ", ".join(f"{hop:g}" for hop in sorted(allowed.values()))
                raise ValueError(f"hop_ms={hop_ms} is not available for this encoder: {choices}")
            self.n_shifts = matches[0]
        self.shift_samples = pt // self.n_shifts * frame_hop
        self.hop_ms = self.token_hop_ms / self.n_shifts

    def forward(self, audio: Tensor) -> Tensor:
        """Scene embeddings, as :func:`get_scene_embeddings`."""
        return get_scene_embeddings(audio, self)

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, embedding_size={self.scene_embedding_size}, "
            f"hop_ms={self.hop_ms:g} ({self.n_shifts} passes of {self.token_hop_ms:g} ms tokens)"
        )


def load_model(
    model_file_path: str = "",
    *,
    device=None,
    hop_ms: float | None = None,
    pooling: str = "avg",
    last_blocks: int = 1,
) -> HearModel:
    """HEAR ``load_model``: an exported fastspec encoder (run directory, ``encoder.safetensors``
    alone or with its ``encoder.json``) as a :class:`HearModel` in eval mode.

    ``device`` (default CPU) and ``hop_ms`` (timestamp hop, see :class:`HearModel`) extend the
    API; HEAR calls ``load_model(path)``. ``pooling``/``last_blocks`` choose the scene
    embedding (``atst``: ATST's class token + mean of the last blocks; see
    :func:`fastspec.encoder.set_pooling`). There are no built-in weights: the path is required.
    """
    if not model_file_path:
        raise ValueError(
            "fastspec.hear.load_model needs the path of an exported encoder (a run directory or "
            "its encoder.safetensors); fastspec ships no default weights"
        )
    encoder = load_encoder(
        os.fspath(model_file_path), device=device, pooling=pooling, last_blocks=last_blocks
    )
    return HearModel(encoder, hop_ms=hop_ms).eval()


def _check_audio(audio, model) -> Tensor:
    if not isinstance(model, HearModel):
        raise TypeError(f"model must come from fastspec.hear.load_model, got {type(model)}")
    if not isinstance(audio, Tensor) or audio.dim() != 2 or not audio.dtype.is_floating_point:
        shape = tuple(audio.shape) if isinstance(audio, Tensor) else type(audio).__name__
        raise ValueError(f"audio must be a float tensor [n_sounds, n_samples], got {shape}")
    return audio


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """HEAR scene embeddings: audio [n_sounds, n_samples] -> [n_sounds, D] float32."""
    audio = _check_audio(audio, model)
    encoder = model.encoder
    with torch.no_grad():
        out = [encoder(chunk) for chunk in audio.split(model.batch_size)]
    if not out:  # zero sounds
        return torch.zeros(0, model.scene_embedding_size, device=audio.device)
    return torch.cat(out).float().to(audio.device)


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """HEAR timestamp embeddings at regular intervals of ``model.hop_ms``.

    audio: [n_sounds, n_samples]. Returns (embeddings [n_sounds, T, D] float32, timestamps
    [n_sounds, T] float32 in ms, the centre of each embedding's token, within [0, clip length]).
    """
    audio = _check_audio(audio, model)
    encoder = model.encoder
    n_sounds, n_samples = audio.shape
    duration_ms = 1000.0 * n_samples / model.sample_rate
    n_shifts, shift = model.n_shifts, model.shift_samples
    shift_ms = 1000.0 * shift / model.sample_rate
    # pass k sees the audio delayed by k * shift samples; its token t is centred, in the
    # clip's own time, at patch_time(t) - k * shift_ms
    passes = []
    for k in range(n_shifts):
        pieces = []
        for chunk in audio.split(model.batch_size):
            delayed = nn.functional.pad(chunk.float(), (k * shift, 0))
            with torch.no_grad():
                pieces.append(encoder.frames(delayed)[0])  # [n, T_k, D]
        emb = torch.cat(pieces) if pieces else torch.zeros(0, 1, model.timestamp_embedding_size)
        times = encoder.patch_times_ms(emb.shape[1]).double() - k * shift_ms  # [T_k]
        passes.append((emb, times))

    # the common grid: the earliest non-negative centre of any pass, then every hop_ms
    start = min(float(t[t >= 0].min()) for _, t in passes if (t >= 0).any())
    hop = model.hop_ms
    n_grid = max(1, math.floor((duration_ms - start) / hop + 1e-9) + 1)
    grid = start + hop * torch.arange(n_grid, dtype=torch.float64)
    device = passes[0][0].device
    embeddings = torch.zeros(n_sounds, n_grid, model.timestamp_embedding_size, device=device)
    filled = torch.zeros(n_grid, dtype=torch.bool)
    for emb, times in passes:
        # grid index of each token of this pass; a token off the grid or outside it is unused
        j = torch.round((times - start) / hop).long()
        on_grid = (j >= 0) & (j < n_grid) & ((start + j * hop - times).abs() < 1e-6)
        embeddings[:, j[on_grid].to(device)] = emb[:, on_grid.to(device)]
        filled[j[on_grid]] = True
    if not bool(filled.all()):
        missing = float(grid[~filled][0])
        raise RuntimeError(
            f"no pass has a token centred at {missing:.3f} ms (hop {hop} ms, {n_shifts} "
            "passes): the token grid is not regular"
        )
    if start > duration_ms:
        # a clip shorter than the first token centre: its one embedding covers all of it, and
        # is stamped at the clip's middle so that the timestamp stays inside the clip
        grid = torch.full((1,), duration_ms / 2, dtype=torch.float64)
    timestamps = grid.float().expand(n_sounds, n_grid)
    return embeddings.float().to(audio.device), timestamps.to(audio.device).contiguous()
