"""The drop-in encoder: waveform in, embeddings out, no training code and no pickle.

``export_encoder`` writes ``encoder.safetensors`` (weights, with the description embedded in its
header) and ``encoder.json`` (the same description: architecture, front-end settings, pooling),
and ``load_encoder`` rebuilds an :class:`Encoder` from either::

    enc = fastspec.load_encoder("runs/maskspec-demo")     # run dir, .safetensors or .json
    emb = enc(wave, lengths)                               # wave [B, S] in [-1, 1] -> [B, D]
    frames, t_ms = enc.frames(wave, lengths)               # [B, N, D], [B, N] (ms)

Variable lengths: frames past a clip's end are zero after the front end, the frame axis is padded
to whole tokens, and tokens past a clip's last token are hidden from attention and pooling, so a
padded batch gives the embeddings of its clips run one at a time. A clip shorter than one token
(even shorter than one analysis window, or empty) is padded to one token.

Fine-tuning in another trainer follows timm: ``forward_features`` (tokens), ``forward_head``
(mean pooling, then the classifier), ``reset_classifier(num_classes)``; with no classifier
(the default) ``forward`` returns the clip embedding.

Backbone-specific steps (how many frames one output token covers, the token grid) sit in the
small methods of the "token layout" section, so that a multiscale backbone can override them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fastspec import __version__
from fastspec.frontend import FrontendConfig, LogMel
from fastspec.models import create_model, list_models
from fastspec.models.vit import pad_frames

FORMAT = "fastspec-encoder"
FORMAT_VERSION = 1
# key of the encoder description in the safetensors header metadata (a JSON string), so that a
# lone (even renamed) .safetensors file is a complete encoder, e.g. for HEAR's load_model(path)
METADATA_KEY = "fastspec_encoder"
_REQUIRED_KEYS = ("model_name", "model_config", "frontend")
POOLINGS = ("avg", "token")


class Encoder(nn.Module):
    """Front end + encoder backbone (+ an optional classifier head); float32 outputs.

    Args:
        frontend: settings of the log-mel front end (``FrontendConfig.to_dict()``).
        model_name, model_config: the registry name and constructor arguments of the backbone.
        num_classes: size of a linear classifier on the pooled embedding; 0 (default) = none,
            and ``forward`` returns embeddings.

    Inputs everywhere: ``wave`` [B, S] (or [S]) float in [-1, 1] at :attr:`sample_rate` (int16
    PCM is scaled by 1/32768), optionally ``lengths`` [B] valid samples per row; the wave is
    moved to the encoder's device. A multi-channel or differently sampled clip must be mixed
    down and resampled first (``fastspec.data.read_audio``, ``fastspec.frontend.resample``).
    """

    num_prefix_tokens = 1  # the class token, first in forward_features' output (as timm ViTs)

    def __init__(
        self,
        frontend: dict[str, Any],
        model_name: str,
        model_config: dict[str, Any],
        num_classes: int = 0,
    ):
        super().__init__()
        self.frontend_config = FrontendConfig.from_dict(frontend)
        self.frontend = LogMel.from_config(self.frontend_config)
        self.model_name = model_name
        self.model_config = dict(model_config)
        self.backbone = create_model(model_name, **model_config)
        self.sample_rate: int = self.frontend_config.sample_rate
        self.embed_dim: int = self.backbone.embed_dim
        self.num_features: int = self.embed_dim  # timm's name for the pooled width
        self.global_pool = "avg"
        self.num_classes = 0
        self.head: nn.Module = nn.Identity()
        if num_classes:
            self.reset_classifier(num_classes)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    # ---- input ----------------------------------------------------------------------------------

    def _prepare(self, wave, lengths) -> tuple[Tensor, Tensor | None]:
        """wave [B, S] or [S] (Tensor or numpy) -> float32 [B, S] on the encoder's device, and
        lengths [B] int64 (None when every row is full, which keeps attention unmasked)."""
        if isinstance(wave, np.ndarray):
            wave = torch.from_numpy(wave)
        if not isinstance(wave, Tensor):
            raise TypeError(f"wave must be a torch.Tensor or numpy array, got {type(wave)}")
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        if wave.dim() != 2:
            raise ValueError(f"wave must be [B, S] or [S], got shape {tuple(wave.shape)}")
        # int16 PCM -> [-1, 1) here: a plain .float() would leave it 32768 times too loud
        scale = 1.0 / 32768.0 if wave.dtype == torch.int16 else None
        wave = wave.to(self.device, torch.float32)
        if scale is not None:
            wave = wave * scale
        if lengths is None:
            return wave, None
        lengths = torch.as_tensor(lengths, device=wave.device)
        if lengths.shape != (wave.shape[0],) or lengths.dtype.is_floating_point:
            raise ValueError(
                f"lengths must be an int tensor of shape [B={wave.shape[0]}], got "
                f"{lengths.dtype} {tuple(lengths.shape)}"
            )
        return wave, lengths.long()

    def _full_lengths(self, wave: Tensor, lengths: Tensor | None) -> Tensor:
        if lengths is not None:
            return lengths
        return torch.full((wave.shape[0],), wave.shape[1], dtype=torch.long, device=wave.device)

    # ---- token layout (backbone-specific: override for a multiscale backbone) -------------------

    @property
    def frames_per_token(self) -> int:
        """Front-end frames one output token covers along time (ViT: the patch height)."""
        return self.backbone.patch_size[0]

    def _pad_mel(self, mel: Tensor) -> Tensor:
        """[B, T, F] -> [B, T', F]: the time axis padded with zeros (the normalised mean) to
        whole tokens, at least one, so clips shorter than a token (or a window) still encode."""
        pt = self.frames_per_token
        return pad_frames(mel, pt, min_frames=pt)

    def _token_lengths(self, n_frames: Tensor) -> Tensor:
        """[B] valid front-end frames -> [B] valid time tokens: every token holding a valid
        frame, and at least one."""
        pt = self.frames_per_token
        return ((n_frames + pt - 1) // pt).clamp_min(1)

    def _token_grid(self, patch_tokens: Tensor, n_frames: int) -> Tensor:
        """[B, N, D] patch tokens (time-major, no class token) of an input of ``n_frames``
        (padded) frames -> [B, T_p, F_p, D]."""
        t_p, f_p = self.backbone.grid(n_frames)
        return patch_tokens.reshape(patch_tokens.shape[0], t_p, f_p, patch_tokens.shape[-1])

    def patch_times_ms(self, n_patches: int) -> Tensor:
        """[n_patches] float32 centre time in ms of each time token: the mean of its frames'
        centre times (Kaldi 16-frame patches: 160 t + 87.5 ms). Tokens are evenly spaced."""
        pt = self.frames_per_token
        centres = self.frontend.frame_times_ms(n_patches * pt)  # [n_patches * pt] float64
        return centres.reshape(n_patches, pt).mean(dim=1).float()

    def frame_lengths(self, lengths, n_samples: int | None = None) -> Tensor:
        """[B] valid rows of :meth:`frames` (time tokens) for clips of ``lengths`` samples (an
        int tensor [B], or None with ``n_samples``: one clip of that many)."""
        if lengths is None:
            if n_samples is None:
                raise ValueError("frame_lengths needs lengths or n_samples")
            lengths = torch.tensor([n_samples])
        return self._token_lengths(self.frontend.num_frames(torch.as_tensor(lengths).long()))

    # ---- stages ---------------------------------------------------------------------------------

    def _encode(self, wave, lengths) -> tuple[Tensor, Tensor, int]:
        """Front end + backbone: tokens [B, 1 + N, D] float32 (class token first, padding tokens
        zeroed), token_lengths [B] int64 (valid time tokens), and the padded frame count."""
        wave, lengths = self._prepare(wave, lengths)
        with torch.no_grad():  # features are data: no graph through the front end
            mel = self.frontend(wave, lengths)  # [B, T, F], zeros past each clip's frames
        mel = self._pad_mel(mel)
        token_lengths = self._token_lengths(
            self.frontend.num_frames(self._full_lengths(wave, lengths))
        )
        # no mask when no lengths were given: every token is valid and attention stays on the
        # unmasked (flash) path
        mask_lengths = token_lengths if lengths is not None else None
        tokens = self.backbone.forward_features(mel, token_lengths=mask_lengths).float()
        if lengths is not None:
            # padding tokens' outputs are unspecified: zero them so that nothing downstream
            # (a user's own pooling of forward_features) can pick up garbage
            grid = self._token_grid(tokens[:, self.num_prefix_tokens :], mel.shape[1])
            valid = self._valid(token_lengths, grid.shape[1])[:, :, None, None]
            patch = (grid * valid).flatten(1, 2)
            tokens = torch.cat([tokens[:, : self.num_prefix_tokens], patch], dim=1)
        return tokens, token_lengths, mel.shape[1]

    @staticmethod
    def _valid(token_lengths: Tensor, t_p: int) -> Tensor:
        """[B, T_p] float mask, 1 on each clip's valid time tokens."""
        t = torch.arange(t_p, device=token_lengths.device)
        return (t[None, :] < token_lengths[:, None]).float()

    def forward_features(self, wave, lengths=None) -> Tensor:
        """timm-style features: [B, 1 + N, D] float32 after the backbone's final norm, the class
        token first, then the N = T_p * F_p patch tokens in time-major grid order; tokens past a
        clip's valid time tokens (``frame_lengths(lengths)``) are zero."""
        return self._encode(wave, lengths)[0]

    def forward_head(
        self, x: Tensor, pre_logits: bool = False, token_lengths: Tensor | None = None
    ) -> Tensor:
        """Pool :meth:`forward_features` output and apply the classifier.

        x: [B, 1 + N, D]; token_lengths: [B] valid time tokens per clip (from
        :meth:`frame_lengths`; None = all). Returns [B, D] pooled (``pre_logits`` or no
        classifier) or [B, num_classes] logits. ``avg`` pooling is the mean of the valid patch
        tokens, ``token`` the class token.
        """
        if self.global_pool == "token":
            pooled = x[:, 0]
        else:
            patch = x[:, self.num_prefix_tokens :]
            if token_lengths is None:
                pooled = patch.mean(dim=1)
            else:
                token_lengths = token_lengths.to(x.device)
                b, n, _ = patch.shape
                f_p = self.backbone.grid(self.frames_per_token)[1]  # tokens per time step
                valid = self._valid(token_lengths, n // f_p).repeat_interleave(f_p, dim=1)
                pooled = (patch * valid[..., None]).sum(dim=1) / (token_lengths * f_p)[:, None]
        return pooled if pre_logits else self.head(pooled)

    def forward(self, wave, lengths=None) -> Tensor:
        """Clip embeddings [B, D] float32 (the mean of each clip's valid patch tokens), or
        logits [B, num_classes] once a classifier is set (:meth:`reset_classifier`)."""
        tokens, token_lengths, _ = self._encode(wave, lengths)
        return self.forward_head(tokens, token_lengths=token_lengths)

    def frames(self, wave, lengths=None) -> tuple[Tensor, Tensor]:
        """Frame embeddings: one per time token, the mean over its frequency tokens.

        Returns (embeddings [B, N, D] float32, timestamps_ms [B, N] float32 at the centre of each
        token's frames, evenly spaced by ``frames_per_token`` hops); rows past a clip's last
        token (``frame_lengths(lengths)``) are zero. The mean of a clip's valid rows is its clip
        embedding. The last token of a clip can reach past its end (it is zero-padded).
        """
        tokens, token_lengths, n_frames = self._encode(wave, lengths)
        grid = self._token_grid(tokens[:, self.num_prefix_tokens :], n_frames)  # [B, T_p, F_p, D]
        emb = grid.mean(dim=2)  # padding tokens are zero already, so padded rows stay zero
        t_p = emb.shape[1]
        times = self.patch_times_ms(t_p).to(emb.device).expand(emb.shape[0], t_p)
        return emb, times

    # ---- classifier (timm API) -----------------------------------------------------------------

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head by a fresh ``nn.Linear(D, num_classes)`` (0: no head, ``forward``
        gives embeddings). ``global_pool``: ``"avg"`` (mean of valid patch tokens, default) or
        ``"token"`` (class token; MAE-style pretraining leaves it untrained)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if global_pool is not None:
            if global_pool not in POOLINGS:
                raise ValueError(f"global_pool must be one of {POOLINGS}, got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        if num_classes == 0:
            self.head = nn.Identity()
            return
        dtype = next(self.backbone.parameters()).dtype
        # initialised on the CPU RNG, then moved: the same seed gives the same head anywhere
        self.head = nn.Linear(self.embed_dim, num_classes).to(self.device, dtype)

    # ---- description ----------------------------------------------------------------------------

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

    The description is also embedded in the safetensors header, so the weights file alone is a
    complete encoder. Both files are written to temporary names and renamed, so a crash leaves
    no torn export.
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
    description = json.dumps(enc.config(), indent=2)
    weights, meta = out / "encoder.safetensors", out / "encoder.json"
    save_file(
        state,
        str(weights) + ".tmp",
        metadata={"format": FORMAT, METADATA_KEY: description},
    )
    Path(str(meta) + ".tmp").write_text(description)
    os.replace(str(weights) + ".tmp", weights)
    os.replace(str(meta) + ".tmp", meta)
    return weights


_NOT_AN_ENCODER_HINT = (
    "expected a fastspec run directory, its encoder.safetensors, or encoder.json (written by "
    "`fastspec pretrain` or fastspec.encoder.export_encoder)"
)


def _locate(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(weights, description JSON or None) for what ``load_encoder`` was given."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no fastspec encoder at {path}: it does not exist")
    if p.is_dir():
        weights = p / "encoder.safetensors"
        if not weights.is_file():
            found = "checkpoints but no exported encoder (the run has not finished)"
            has_ckpt = (p / "checkpoints").is_dir()
            raise FileNotFoundError(
                f"no fastspec encoder at {path}: {weights.name} is missing"
                + (f"; the folder holds {found}" if has_ckpt else "")
                + f"; {_NOT_AN_ENCODER_HINT}"
            )
        return weights, (p / "encoder.json") if (p / "encoder.json").is_file() else None
    if p.suffix == ".json":
        weights = p.with_name("encoder.safetensors")
        if p.stem != "encoder" and p.with_suffix(".safetensors").is_file():
            weights = p.with_suffix(".safetensors")  # a renamed pair: NAME.json + NAME.safetensors
        if not weights.is_file():
            raise FileNotFoundError(f"no fastspec encoder at {path}: {weights} is missing")
        return weights, p
    if p.suffix != ".safetensors":
        pickled = ""
        if p.suffix in (".pt", ".pth", ".ckpt", ".bin", ".pkl"):
            pickled = " (a pickled checkpoint? fastspec never unpickles a file)"
        raise ValueError(f"{path} is not a fastspec encoder{pickled}: {_NOT_AN_ENCODER_HINT}")
    # NAME.json beside NAME.safetensors; otherwise the description embedded in the header
    meta = p.with_suffix(".json")
    return p, meta if meta.is_file() else None


def _read_description(weights: Path, meta: Path | None) -> tuple[dict[str, Any], str]:
    """The encoder description (from ``meta``, else the weights' header) and where it came from."""
    if meta is not None:
        where = str(meta)
        try:
            cfg = json.loads(meta.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{meta} is not a fastspec encoder description: {e}") from None
    else:
        where = f"{weights} (header)"
        try:
            with safe_open(str(weights), framework="pt") as f:
                header = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{weights} is not a readable safetensors file: {e}") from None
        if METADATA_KEY not in header and weights.with_name("encoder.json").is_file():
            # an export from before the header carried the description, renamed in its folder
            return _read_description(weights, weights.with_name("encoder.json"))
        if METADATA_KEY not in header:
            raise ValueError(
                f"{weights} is not a fastspec encoder: no encoder.json next to it and no "
                f"description in its header; {_NOT_AN_ENCODER_HINT}"
            )
        try:
            cfg = json.loads(header[METADATA_KEY])
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} holds an unreadable encoder description: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ValueError(f"{where} is not a fastspec encoder description (no format={FORMAT!r})")
    if cfg.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{where} has format_version {cfg['format_version']}, newer than this fastspec "
            f"({__version__}) reads ({FORMAT_VERSION}); upgrade fastspec"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"{where} is an incomplete fastspec encoder description: no {missing}")
    return cfg, where


def load_encoder(path: str | os.PathLike, device=None) -> Encoder:
    """Load an exported encoder: a run directory, its ``encoder.safetensors`` (alone or renamed:
    the description is embedded) or ``encoder.json``.

    Returns an :class:`Encoder` in eval mode on ``device`` (default CPU). Reads JSON and
    safetensors only (no pickle, no network). Raises FileNotFoundError when nothing is there,
    ValueError naming the file when it is not a fastspec encoder (or not a readable one).
    """
    weights, meta = _locate(path)
    cfg, where = _read_description(weights, meta)
    if cfg["model_name"] not in list_models():
        raise ValueError(
            f"{where} names model {cfg['model_name']!r}, which this fastspec ({__version__}) "
            f"does not have; available: {', '.join(list_models())}"
        )
    try:
        enc = Encoder(cfg["frontend"], cfg["model_name"], cfg["model_config"])
    except (TypeError, ValueError) as e:  # an unknown override or front-end key, a bad value
        raise ValueError(f"{where} describes an encoder this fastspec cannot build: {e}") from None
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for torn / foreign files
        raise ValueError(f"{weights} is not a readable safetensors file: {e}") from None
    try:
        missing, unexpected = enc.backbone.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise ValueError(f"{weights} does not match {cfg['model_name']}: {e}") from None
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match {cfg['model_name']}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return enc.to(device).eval()
