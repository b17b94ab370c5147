"""Reading input images for the CLIs and the Python API, with a stated resize policy.

Formats: PGM/PPM (P2, P3, P5, P6; read natively), `.npy` (uint8 [H, W], [H, W, C] or
[B, H, W, C]), and PNG/JPEG/BMP/GIF/TIFF through Pillow (optional: `pip install
'bsvit-int[images]'`). A directory stands for the image files in it, sorted by name;
hidden files are skipped and any other file in it is an error.

Policy: an image whose height, width or channel count differs from the model's is an error,
unless `resize=True`, which resamples with nearest neighbour (output pixel (y, x) takes
source pixel (floor((y + 0.5)·H_src / H), floor((x + 0.5)·W_src / W))) and converts
channels: grey → RGB by copying, RGB → grey by integer luma (299 R + 587 G + 114 B + 500)
// 1000. Palette images are expanded and alpha is dropped, always. No float arithmetic.

Hostile files: only regular files are read (a device or FIFO named x.pgm is refused); PNM
images are at most 16384 pixels a side and compressed (Pillow) images at most 2**26 pixels,
checked before decoding, so a small file cannot make the reader allocate gigabytes; a
`.npy` header must describe exactly the data the file holds. Every failure is an ImageError.
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np
import numpy.lib.format as npy_format

PILLOW_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
NATIVE_EXT = {".pgm", ".ppm", ".pnm", ".npy"}
IMAGE_EXT = PILLOW_EXT | NATIVE_EXT
MAX_SIDE = 16384
MAX_DECODED_PIXELS = 1 << 26       # compressed formats: decoded size is not the file's size


class ImageError(ValueError):
    """An input image cannot be read or does not fit the model; the message names the file."""


def _pnm(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        data = f.read()
    tokens: List[bytes] = []
    pos = 0
    # Header: magic, width, height, maxval, separated by whitespace, with # comments.
    while len(tokens) < 4:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if pos < len(data) and data[pos:pos + 1] == b"#":
            while pos < len(data) and data[pos:pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace() and data[pos:pos + 1] != b"#":
            pos += 1
        if start == pos:
            raise ImageError(f"{path}: truncated PNM header")
        tokens.append(data[start:pos])
    magic = tokens[0]
    if magic not in (b"P2", b"P3", b"P5", b"P6"):
        raise ImageError(f"{path}: not a PGM/PPM file (magic {magic[:8]!r})")
    try:
        w, h, maxval = (int(t) for t in tokens[1:4])
    except ValueError:
        raise ImageError(f"{path}: malformed PNM header") from None
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE and 0 < maxval <= 255):
        raise ImageError(f"{path}: unsupported PNM size {w}x{h} or maxval {maxval} "
                         "(8-bit images up to 16384 pixels a side)")
    c = 3 if magic in (b"P3", b"P6") else 1
    n = w * h * c
    if magic in (b"P5", b"P6"):
        raw = data[pos + 1:pos + 1 + n]
        if len(raw) != n:
            raise ImageError(f"{path}: truncated PNM data ({len(raw)} of {n} bytes)")
        pixels = np.frombuffer(raw, dtype=np.uint8)
    else:
        try:
            values = [int(t) for t in data[pos:].split()[:n]]
        except ValueError:
            raise ImageError(f"{path}: malformed PNM pixel data") from None
        if len(values) != n or max(values, default=0) > maxval:
            raise ImageError(f"{path}: truncated or out-of-range PNM pixel data")
        pixels = np.array(values, dtype=np.uint8)
    img = pixels.reshape(h, w, c)
    if maxval != 255:   # integer rescale to 0..255, rounding half up
        img = ((img.astype(np.uint32) * 255 + maxval // 2) // maxval).astype(np.uint8)
    return img


def _pillow(path: str) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise ImageError(f"{path}: reading {os.path.splitext(path)[1]} files needs Pillow: "
                         "pip install 'bsvit-int[images]' (PGM/PPM and .npy need nothing)") \
            from None
    try:
        with Image.open(path) as im:
            w, h = im.size
            if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE and w * h <= MAX_DECODED_PIXELS):
                raise ImageError(f"{path}: image is {w}x{h}; this reader decodes at most "
                                 f"{MAX_SIDE} pixels a side and {MAX_DECODED_PIXELS} pixels")
            im.load()
            mode = "L" if im.mode in ("1", "L", "LA", "I;16", "I", "F") else "RGB"
            if im.mode == "P":
                mode = "RGB"
            arr = np.asarray(im.convert(mode), dtype=np.uint8)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 -- Pillow reports corrupt data with many types
        # (OSError, ValueError, SyntaxError, EOFError, struct.error, DecompressionBombError)
        raise ImageError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _npy_header(path: str) -> Tuple[Tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, checked against the file's size before loading
    (np.load allocates what the header claims before it finds the data missing)."""
    with open(path, "rb") as f:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = npy_format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        data_bytes = os.fstat(f.fileno()).st_size - f.tell()
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise ValueError(f"shape {shape} is not a tuple of non-negative integers")
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize != data_bytes:
        raise ValueError(f"header says {list(shape)} {dtype} ({count * dtype.itemsize} bytes) "
                         f"but the file holds {data_bytes} bytes of data")
    return shape, dtype


def _npy(path: str) -> np.ndarray:
    try:
        _npy_header(path)
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, MemoryError) as e:
        raise ImageError(f"{path}: not a readable .npy array ({e})") from None
    if arr.dtype != np.uint8:
        raise ImageError(f"{path}: .npy images must be uint8 raw pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim not in (3, 4):
        raise ImageError(f"{path}: .npy must be [H, W], [H, W, C] or [B, H, W, C], "
                         f"got shape {list(arr.shape)}")
    return arr


def read_image(path: str) -> np.ndarray:
    """uint8 [H, W, C] (or [B, H, W, C] for a batched .npy) from one file."""
    ext = os.path.splitext(path)[1].lower()
    if os.path.exists(path) and not os.path.isfile(path):
        raise ImageError(f"{path}: not a regular file")
    if ext in (".pgm", ".ppm", ".pnm"):
        return _pnm(path)
    if ext == ".npy":
        return _npy(path)
    if ext in PILLOW_EXT:
        return _pillow(path)
    if ext in (".pt", ".pth", ".bsi"):
        raise ImageError(f"{path}: a model file, not an image")
    raise ImageError(f"{path}: not an image this tool reads (known: "
                     f"{', '.join(sorted(IMAGE_EXT))})")


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """Files named, with each directory replaced by its image files, sorted."""
    out: List[str] = []
    for p in inputs:
        if os.path.isdir(p):
            names = sorted(n for n in os.listdir(p) if not n.startswith("."))
            for n in names:
                full = os.path.join(p, n)
                if os.path.isdir(full):
                    continue
                if os.path.splitext(n)[1].lower() not in IMAGE_EXT:
                    raise ImageError(f"{full}: not an image (directory {p} may hold only "
                                     f"images: {', '.join(sorted(IMAGE_EXT))})")
                out.append(full)
        elif os.path.exists(p):
            out.append(p)
        else:
            raise ImageError(f"{p}: no such file or directory")
    return out


def fit(img: np.ndarray, shape: Tuple[int, int, int], resize: bool, name: str) -> np.ndarray:
    """Check (or, with resize, make) one image [H, W, C] match the model's (H, W, C)."""
    h, w, c = shape
    if img.shape == (h, w, c):
        return img
    if img.size == 0:
        raise ImageError(f"{name}: image is {img.shape[0]}x{img.shape[1]} with "
                         f"{img.shape[2]} channel(s): it holds no pixels")
    if not resize:
        raise ImageError(f"{name}: image is {img.shape[0]}x{img.shape[1]} with {img.shape[2]} "
                         f"channel(s); the model takes {h}x{w} with {c} (use --resize to "
                         "resample with nearest neighbour and convert channels)")
    ys = ((2 * np.arange(h) + 1) * img.shape[0]) // (2 * h)
    xs = ((2 * np.arange(w) + 1) * img.shape[1]) // (2 * w)
    img = img[ys][:, xs]
    if img.shape[2] == c:
        return np.ascontiguousarray(img)
    if c == 3 and img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if c == 1 and img.shape[2] == 3:
        rgb = img.astype(np.uint32)
        luma = (299 * rgb[..., 0] + 587 * rgb[..., 1] + 114 * rgb[..., 2] + 500) // 1000
        return luma.astype(np.uint8)[..., None]
    raise ImageError(f"{name}: cannot convert {img.shape[2]} channels to {c}")


def load_images(inputs: Sequence[str], shape: Tuple[int, int, int], resize: bool = False
                ) -> Tuple[np.ndarray, List[str]]:
    """(uint8 [B, H, W, C], one name per image) from files, directories and .npy batches."""
    if isinstance(inputs, (str, bytes, os.PathLike)):
        raise TypeError(f"inputs must be a list of paths, got the single path {inputs!r}; "
                        "pass [path]")
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                    for v in shape)):
        raise ValueError(f"shape must be (height, width, channels) of positive ints, "
                         f"got {shape!r}")
    shape = tuple(int(v) for v in shape)
    images, names = [], []
    for path in expand_inputs(inputs):
        arr = read_image(path)
        batch = arr if arr.ndim == 4 else arr[None]
        for i, img in enumerate(batch):
            name = path if arr.ndim == 3 else f"{path}[{i}]"
            images.append(fit(img, shape, resize, name))
            names.append(name)
    if not images:
        raise ImageError("no images given")
    return np.stack(images), names
