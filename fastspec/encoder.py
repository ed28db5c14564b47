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

The backbone is used only through the encoder contract (``fastspec.models.contract``): its
padding to whole tokens, token lengths, output grid, frame tokens and their time spans, so a
pooling backbone (MAST, trained by any recipe) gives frames with correct timestamps too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fastspec import __version__
from fastspec.encoder_files import FORMAT, FORMAT_VERSION, METADATA_KEY, locate, read_description
from fastspec.frontend import FrontendConfig, LogMel
from fastspec.models import SpectrogramEncoder, create_model, list_models

# avg: mean of the valid patch tokens; token: the class token; atst: ATST's linear-evaluation
# features, per last block the mean of its normed patch tokens and its normed class token, concatenated
POOLINGS = ("avg", "token", "atst")


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
        self.backbone: SpectrogramEncoder = create_model(model_name, **model_config)
        self.sample_rate: int = self.frontend_config.sample_rate
        self.embed_dim: int = self.backbone.embed_dim
        self.num_features: int = self.embed_dim  # timm's name for the pooled width
        self.global_pool = "avg"
        self.last_blocks = 1  # blocks pooled by ``atst`` pooling
        self.num_classes = 0
        self.class_names: list[str] = []  # of the head's outputs, when known (fine-tuned)
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

    # ---- token layout (from the encoder contract) ------------------------------------------------

    @property
    def frames_per_token(self) -> int:
        """Front-end frames one output time step covers (ViT: the patch height; MAST: its
        output token's)."""
        return self.backbone.frame_hop

    def _pad_mel(self, mel: Tensor) -> Tensor:
        """[B, T, F] -> [B, T', F]: the time axis padded with zeros (the normalised mean) to
        whole tokens, at least one, so clips shorter than a token (or a window) still encode."""
        return self.backbone.pad_frames(mel, min_frames=self.frames_per_token)

    def _token_lengths(self, n_frames: Tensor) -> Tensor:
        """[B] valid front-end frames -> [B] valid time tokens: every token holding a valid
        frame, and at least one."""
        return self.backbone.token_lengths(n_frames)

    def _token_grid(self, patch_tokens: Tensor, n_frames: int) -> Tensor:
        """[B, N, D] patch tokens (time-major, no class token) of an input of ``n_frames``
        (padded) frames -> [B, T_p, F_p, D]."""
        t_p, f_p = self.backbone.grid(n_frames)
        return patch_tokens.reshape(patch_tokens.shape[0], t_p, f_p, patch_tokens.shape[-1])

    def patch_times_ms(self, n_patches: int) -> Tensor:
        """[n_patches] float32 centre time in ms of each output time step: the mean of the
        centre times of the frames it spans (``frame_spans``; Kaldi 16-frame patches:
        160 t + 87.5 ms). Steps are evenly spaced."""
        if n_patches == 0:
            return torch.zeros(0)
        spans = self.backbone.frame_spans(n_patches)  # [n, 2] first frame, one past the last
        centres = self.frontend.frame_times_ms(int(spans[-1, 1]))  # float64 per frame
        ends = torch.cat([torch.zeros(1, dtype=centres.dtype), centres.cumsum(0)])
        return ((ends[spans[:, 1]] - ends[spans[:, 0]]) / (spans[:, 1] - spans[:, 0])).float()

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
        else:  # avg (atst pools each block's tokens the same way: embed)
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
        """Clip embeddings [B, pooled_dim] float32 (:meth:`embed`), or logits
        [B, num_classes] once a classifier is set (:meth:`reset_classifier`)."""
        return self.head(self.embed(wave, lengths))

    @property
    def pooled_dim(self) -> int:
        """Width of :meth:`embed`: D, or with ``atst`` pooling ``2 * last_blocks * D`` (``last_blocks
        * D`` for an encoder without a class token)."""
        if self.global_pool != "atst":
            return self.embed_dim
        return (1 + self.backbone.class_token) * self.last_blocks * self.embed_dim

    def embed(self, wave, lengths=None) -> Tensor:
        """Clip embeddings [B, pooled_dim] float32 by ``global_pool``: ``avg`` the mean of each
        clip's valid patch tokens, ``token`` the class token, ``atst`` ATST's linear-evaluation
        features (audiossl ``get_intermediate_layers``): for each of the ``last_blocks`` last
        blocks, after the final norm, the mean of its valid patch tokens, then its class token,
        concatenated in block order; without a class token (ATST-Frame) the means alone, as
        audiossl's ``FrameAST.get_intermediate_layers``."""
        if self.global_pool != "atst":
            tokens, token_lengths, _ = self._encode(wave, lengths)
            return self.forward_head(tokens, pre_logits=True, token_lengths=token_lengths)
        # the last blocks' outputs, recorded through the encoder contract (any encoder)
        with self.backbone.record_blocks(self.last_blocks) as outputs:
            _, token_lengths, _ = self._encode(wave, lengths)
        parts = []
        for x in outputs:  # [B, P + N, D] each, P prefix tokens (the class token) first
            # both read after the final norm, as audiossl's get_cls_avg reads self.norm(x)
            x = self.backbone.norm(x.float()).float()
            patch_mean = self.forward_head(x, pre_logits=True, token_lengths=token_lengths)
            parts += [patch_mean, x[:, 0]] if self.backbone.class_token else [patch_mean]
        return torch.cat(parts, dim=1)

    def frames(self, wave, lengths=None) -> tuple[Tensor, Tensor]:
        """Frame embeddings: one per time token, the mean over its frequency tokens.

        Returns (embeddings [B, N, D] float32, timestamps_ms [B, N] float32 at the centre of each
        token's frames, evenly spaced by ``frames_per_token`` hops); rows past a clip's last
        token (``frame_lengths(lengths)``) are zero. The mean of a clip's valid rows is its clip
        embedding. The last token of a clip can reach past its end (it is zero-padded).
        """
        tokens, token_lengths, n_frames = self._encode(wave, lengths)
        emb = self.backbone.frame_tokens(tokens, n_frames)  # [B, T_p, D]; padding rows are zero
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
            if global_pool == "token" and not self.backbone.class_token:
                raise ValueError("global_pool 'token' needs a class token; this encoder has none")
            self.global_pool = global_pool
        self.num_classes = num_classes
        if num_classes == 0:
            self.head = nn.Identity()
            return
        dtype = next(self.backbone.parameters()).dtype
        # initialised on the CPU RNG, then moved: the same seed gives the same head anywhere
        self.head = nn.Linear(self.pooled_dim, num_classes).to(self.device, dtype)

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
            **({"head": self.head_config()} if self.num_classes else {}),
        }

    def head_config(self) -> dict[str, Any]:
        """The classifier a fine-tuned export records: ``nn.Linear(pooled_dim, num_classes)``
        on ``pooling`` (weights ``head.weight`` / ``head.bias``), and the class names."""
        return {
            "type": "linear",
            "num_classes": self.num_classes,
            "pooling": self.global_pool,
            "last_blocks": self.last_blocks,
            "class_names": list(self.class_names),
        }


def export_encoder(
    backbone: nn.Module, frontend: FrontendConfig, out_dir: str | os.PathLike
) -> Path:
    """Write ``encoder.safetensors`` and ``encoder.json`` for ``backbone`` into ``out_dir``.

    The description is also embedded in the safetensors header, so the weights file alone is a
    complete encoder. Both files are written to temporary names and renamed, so a crash leaves
    no torn export.
    """
    enc = Encoder(frontend.to_dict(), backbone.model_name, backbone.arch_config())
    # clone: safetensors refuses tensors that share storage, and the source may be compiled
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous().clone()
        for k, v in backbone.state_dict().items()
    }
    enc.backbone.load_state_dict(state)
    return save_encoder(enc, out_dir)


def save_encoder(encoder: Encoder, out_dir: str | os.PathLike) -> Path:
    """Write ``encoder`` (backbone, and its classifier head when it has one: weights
    ``head.*``, description ``head``) as ``encoder.safetensors`` + ``encoder.json`` in
    ``out_dir``, atomically; :func:`load_encoder` then returns logits."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    heads = encoder.head.state_dict() if encoder.num_classes else {}
    parts = [("", encoder.backbone.state_dict()), ("head.", heads)]
    state = {
        prefix + k: v.detach().to("cpu", torch.float32).contiguous().clone()
        for prefix, part in parts
        for k, v in part.items()
    }
    description = json.dumps(encoder.config(), indent=2)
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


def set_pooling(encoder: Encoder, pooling: str = "avg", last_blocks: int = 1) -> Encoder:
    """Choose how ``encoder`` pools clip embeddings (:data:`POOLINGS`; ``last_blocks`` for
    ``atst``), in place; an existing classifier head must match the new width."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling == "token" and not encoder.backbone.class_token:
        raise ValueError("pooling 'token' needs a class token; this encoder has none (use avg)")
    depth = len(encoder.backbone.blocks)
    if not 1 <= last_blocks <= depth:
        raise ValueError(
            f"last_blocks must be in 1..{depth} (the encoder's blocks), got {last_blocks}"
        )
    encoder.global_pool, encoder.last_blocks = pooling, int(last_blocks)
    if encoder.num_classes and encoder.head.in_features != encoder.pooled_dim:
        raise ValueError(
            f"pooling {pooling!r} gives {encoder.pooled_dim}-d embeddings; the classifier "
            f"expects {encoder.head.in_features}"
        )
    return encoder


def load_encoder(
    path: str | os.PathLike, device=None, pooling: str | None = None, last_blocks: int = 1
) -> Encoder:
    """Load an exported encoder: a run directory, its ``encoder.safetensors`` (alone or renamed:
    the description is embedded) or ``encoder.json``.

    ``pooling``/``last_blocks``: how clip embeddings are pooled (:func:`set_pooling`; ``atst``
    gives ATST's linear-evaluation features; default ``avg``, or the pooling a fine-tuned
    export's head was trained on: it returns logits). Returns an :class:`Encoder` in eval mode on
    ``device`` (default CPU). Reads JSON and
    safetensors only (no pickle, no network). Raises FileNotFoundError when nothing is there,
    ValueError naming the file when it is not a fastspec encoder (or not a readable one).
    """
    weights, meta = locate(path)
    cfg, where = read_description(weights, meta)
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
    head = cfg.get("head") or {}
    if head:  # a fine-tuned export: its classifier on the pooling it was trained with
        pooling, last_blocks = pooling or head["pooling"], head.get("last_blocks", last_blocks)
        set_pooling(enc, head["pooling"], last_blocks).reset_classifier(int(head["num_classes"]))
        enc.class_names = list(head.get("class_names", []))
        try:
            enc.head.load_state_dict({k[5:]: state.pop(k) for k in list(state) if k[:5] == "head."})
        except RuntimeError as e:
            raise ValueError(f"{weights}: its head does not match {where}: {e}") from None
    try:
        missing, unexpected = enc.backbone.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise ValueError(f"{weights} does not match {cfg['model_name']}: {e}") from None
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match {cfg['model_name']}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return set_pooling(enc, pooling or "avg", last_blocks).to(device).eval()
