"""fastspec: fast self-supervised pretraining of audio spectrogram transformers.

Layout (DESIGN.md §2): ``fastspec.kernels`` (Triton) -> ``frontend`` / ``masking`` / ``models``
-> ``recipes`` -> ``train`` -> ``cli``. The public entry points are re-exported here lazily so
that ``import fastspec`` stays cheap.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_encoder"]


def __getattr__(name):
    # lazy: load_encoder pulls in torch and the models, which `fastspec --help` does not need
    if name == "load_encoder":
        from fastspec.encoder import load_encoder

        return load_encoder
    raise AttributeError(f"module 'fastspec' has no attribute {name!r}")
