"""bsvit-int: integer-only inference for Burst Spiking Vision Transformers.

    import bsvit_int
    model = bsvit_int.load("model.bsi")
    logits = model.predict(images)          # uint8 [B, H, W, C] -> int32 [B, classes]

This package needs NumPy only; the PyTorch side lives in `bsvit_int.converters`.
"""
from .config import BSViTConfig
from .engine import Model, load
from .errors import BsiFormatError, ConversionError

__version__ = "0.1.0"

__all__ = ["BSViTConfig", "BsiFormatError", "ConversionError", "Model", "load", "__version__"]
