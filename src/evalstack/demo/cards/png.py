"""A fast, deterministic, metadata-free PNG encoder for noisy 8-bit RGB photos."""

from __future__ import annotations

import zlib

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def encode_png(img: Image.Image | np.ndarray) -> bytes:
    """Encode an 8-bit RGB image (or an (H, W, 3) uint8 array) as a minimal,
    metadata-free PNG.

    Pillow's encoder always runs adaptive per-row filter selection, which costs
    ~40 ms on a noisy 730 x 1220 card and cannot be switched off.  For sensor-noise
    dominated photos, the "Up" filter on every scanline with Huffman-only deflate is
    both the fastest (~20 ms) and the smallest option measured (LZ77 matching finds
    nothing in noise), and the output is byte-for-byte deterministic (no
    timestamps, no ancillary chunks).
    """
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected 8-bit RGB, got {arr.dtype} array of shape {arr.shape}")
    h, w, _ = arr.shape
    rows = arr.reshape(h, 3 * w)
    raw = np.empty((h, 1 + 3 * w), dtype=np.uint8)
    raw[:, 0] = 2  # filter type "Up": difference to the previous scanline, mod 256
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    comp = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    idat = comp.compress(raw.data) + comp.flush()
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes((8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
