"""Bitset spikes in NumPy: the oracles of the packing kernels in bsvit_int._kernels.

Binary spikes [R, D] are packed along channels into uint64 words, bit d % 64 of word
d // 64, so a head's dims are contiguous bits and Q·K is a popcount of an AND.
"""
import numpy as np


def pack_bits_u64(spikes: np.ndarray) -> np.ndarray:
    """[R, D] (non-zero = spike) -> uint64 [R, ceil(D/64)]."""
    spikes = np.asarray(spikes)
    rows, d = spikes.shape
    words = (d + 63) // 64
    padded = np.zeros((rows, words * 64), dtype=np.uint8)
    padded[:, :d] = spikes != 0
    packed = np.packbits(padded, axis=1, bitorder="little")      # [R, words*8] bytes
    return packed.view("<u8").astype(np.uint64).reshape(rows, words)


def unpack_bits_u64(words: np.ndarray, d: int) -> np.ndarray:
    """uint64 [R, W] -> uint8 [R, d] of 0/1."""
    words = np.ascontiguousarray(words, dtype="<u8")
    bits = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")
    return bits[:, :d].copy()
