"""Exception types shared across bsvit_int."""


class BsiFormatError(ValueError):
    """A `.bsi` model file is malformed, truncated, corrupted or of an unsupported version.

    Raised by the container reader (see docs/bsi-format.md) for every problem found in the
    file's bytes, never for OS-level errors such as a missing file. It subclasses ValueError
    so callers that already catch ValueError for bad input keep working. The message names
    the field or tensor at fault and the offending value.
    """


class ConversionError(ValueError):
    """A checkpoint cannot become an integer model: unreadable, inconsistent with its config,
    containing a layer with no integer-only form, or failing an accumulator bound.

    The message names the tensor, layer or bound at fault.
    """
