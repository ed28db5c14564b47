"""The drop-in encoder: waveform in, embeddings out, no training code and no pickle.

``export_encoder`` writes ``encoder.safetensors`` (weights) and ``encoder.json`` (the
architecture, the front-end settings and the pooling), and ``load_encoder`` rebuilds an
:class:`Encoder` from them::

    enc = fastspec.load_encoder("runs/maskspec-demo")     # run directory or encoder.safetensors
    emb = enc(wave, lengths)                               # wave [B, S] in [-1, 1] -> [B, D]
    frames, t_ms = enc.frames(wave, lengths)               # [B, N, D], [B, N] (ms)

Variable lengths: frames past a clip's end are zero after the front end, the frame axis is padded
to whole patches, and tokens past a clip's last patch are hidden from attention and pooling, so a
padded batch gives the embeddings of its clips run one at a time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fastspec import __version__
from fastspec.frontend import FrontendConfig, LogMel
from fastspec.models import create_model
from fastspec.models.vit import pad_frames

FORMAT = "fastspec-encoder"
FORMAT_VERSION = 1


class Encoder(nn.Module):
    """Front end + encoder backbone; outputs float32 embeddings.

    Args:
        frontend: settings of the log-mel front end (``FrontendConfig.to_dict()``).
        model_name, model_config: the registry name and constructor arguments of the backbone.
    """

    def __init__(self, frontend: dict[str, Any], model_name: str, model_config: dict[str, Any]):
        super().__init__()
        self.frontend_config = FrontendConfig.from_dict(frontend)
        self.frontend = LogMel.from_config(self.frontend_config)
        self.model_name = model_name
        self.model_config = dict(model_config)
        self.backbone = create_model(model_name, **model_config)
        self.sample_rate: int = self.frontend_config.sample_rate
        self.embed_dim: int = self.backbone.embed_dim

    def _tokens(self, wave: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """Patch tokens on the (T_p, F_p) grid and the valid time-patch count per clip.

        Returns tokens [B, T_p, F_p, D] (after the final norm) and token_lengths [B] int64.
        """
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        if wave.dim() != 2:
            raise ValueError(f"wave must be [B, S] or [S], got shape {tuple(wave.shape)}")
        batch, n_samples = wave.shape
        if lengths is None:
            lengths = torch.full((batch,), n_samples, dtype=torch.long, device=wave.device)
        lengths = torch.as_tensor(lengths, device=wave.device).long()
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must be [B]={batch}, got shape {tuple(lengths.shape)}")
        pt = self.backbone.patch_size[0]
        mel = self.frontend(wave.float(), lengths)  # [B, T, F], zeros past each clip's frames
        # at least one patch per clip, so clips shorter than one window still get an embedding
        mel = pad_frames(mel, pt, min_frames=pt)
        n_frames = self.frontend.num_frames(lengths)  # [B]
        token_lengths = ((n_frames + pt - 1) // pt).clamp_min(1)
        t_p, f_p = self.backbone.grid(mel.shape[1])
        tokens = self.backbone.forward_features(mel, token_lengths=token_lengths)
        tokens = tokens[:, 1:].float().reshape(batch, t_p, f_p, -1)  # drop the class token
        return tokens, token_lengths

    def frames(self, wave: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Frame embeddings: one per time patch, averaged over frequency patches.

        wave: [B, S] (or [S]) float in [-1, 1] at ``sample_rate``; lengths: [B] valid samples.
        Returns (embeddings [B, N, D] float32, timestamps_ms [B, N] float32 at patch centres);
        rows past a clip's last patch are zero.
        """
        tokens, token_lengths = self._tokens(wave, lengths)
        emb = tokens.mean(dim=2)  # [B, T_p, D]
        t_p = emb.shape[1]
        valid = torch.arange(t_p, device=emb.device)[None, :] < token_lengths[:, None]
        emb = emb * valid[..., None]
        return emb, self.patch_times_ms(t_p).to(emb.device).expand(emb.shape[0], t_p)

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Clip embeddings [B, D] float32: the mean of the clip's valid patch tokens."""
        tokens, token_lengths = self._tokens(wave, lengths)
        batch, t_p, f_p, _ = tokens.shape
        valid = torch.arange(t_p, device=tokens.device)[None, :] < token_lengths[:, None]
        weight = valid[:, :, None, None].to(tokens.dtype)  # [B, T_p, 1, 1]
        return (tokens * weight).sum(dim=(1, 2)) / (token_lengths * f_p)[:, None].to(tokens.dtype)

    def patch_times_ms(self, n_patches: int) -> Tensor:
        """Centre time in ms of each time patch: the mean of its frames' centre times."""
        pt = self.backbone.patch_size[0]
        centres = self.frontend.frame_times_ms(n_patches * pt).float()  # [n_patches * pt]
        return centres.reshape(n_patches, pt).mean(dim=1)

    def config(self) -> dict[str, Any]:
        """What encoder.json records: enough to rebuild this module with no training code."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fastspec_version": __version__,
            "model_name": self.model_name,
            "model_config": self.model_config,
            "frontend": self.frontend_config.to_dict(),
            "sample_rate": self.sample_rate,
            "embed_dim": self.embed_dim,
            "pooling": "mean",
        }


def export_encoder(
    backbone: nn.Module, frontend: FrontendConfig, out_dir: str | os.PathLike
) -> Path:
    """Write ``encoder.safetensors`` and ``encoder.json`` for ``backbone`` into ``out_dir``.

    Both files are written to temporary names and renamed, so a crash leaves no torn export.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enc = Encoder(frontend.to_dict(), backbone.model_name, backbone.arch_config())
    # clone: safetensors refuses tensors that share storage, and the source may be compiled
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous().clone()
        for k, v in backbone.state_dict().items()
    }
    enc.backbone.load_state_dict(state)
    weights, meta = out / "encoder.safetensors", out / "encoder.json"
    save_file(state, str(weights) + ".tmp", metadata={"format": FORMAT})
    Path(str(meta) + ".tmp").write_text(json.dumps(enc.config(), indent=2))
    os.replace(str(weights) + ".tmp", weights)
    os.replace(str(meta) + ".tmp", meta)
    return weights


def load_encoder(path: str | os.PathLike, device=None) -> Encoder:
    """Load an exported encoder: a run directory, its ``encoder.safetensors`` or ``encoder.json``.

    Returns an :class:`Encoder` in eval mode on ``device``. Raises ValueError naming the file when
    it is not a fastspec encoder.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "encoder.safetensors"
    weights = p.with_name("encoder.safetensors") if p.suffix == ".json" else p
    meta = weights.with_name("encoder.json")
    for f in (weights, meta):
        if not f.is_file():
            raise FileNotFoundError(f"no fastspec encoder at {path}: {f} is missing")
    try:
        cfg = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta} is not a fastspec encoder description: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ValueError(f"{meta} is not a fastspec encoder description (no format={FORMAT!r})")
    if cfg.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{meta} has format_version {cfg['format_version']}, newer than this fastspec "
            f"({__version__}) reads ({FORMAT_VERSION})"
        )
    enc = Encoder(cfg["frontend"], cfg["model_name"], cfg["model_config"])
    try:
        state = load_file(str(weights))
    except Exception as e:
        raise ValueError(f"{weights} is not a readable safetensors file: {e}") from None
    missing, unexpected = enc.backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match {cfg['model_name']}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return enc.to(device).eval()
