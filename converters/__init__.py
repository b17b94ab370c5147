"""The PyTorch side of bsvit-int: the reference BSViT, snapping and conversion.

This subpackage imports torch (install the `convert` extra); the runtime `bsvit_int`
never imports it.
"""
from bsvit_int.config import BSViTConfig
from bsvit_int.errors import ConversionError

from .model import BSViT
from .quantizer import integer_faithful, quantize, snap

__all__ = ["BSViT", "BSViTConfig", "ConversionError", "convert", "integer_faithful",
           "quantize", "snap"]


def convert(src, dst, **kwargs):
    """Convert checkpoint `src` (.pt) to integer model `dst` (.bsi); returns the report dict.

    See `bsvit_int.converters.convert_model.convert` for the keyword arguments.
    """
    from .convert_model import convert as _convert
    return _convert(src, dst, **kwargs)
