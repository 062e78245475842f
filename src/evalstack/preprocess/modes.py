"""Pillow image modes → the 8-bit pixels pipelines work on: one decision per mode, written down.

PAD's `nn_predict` crops and resizes the opened image and reads it as (H, W, 3): it is
defined for RGB cards. Where a card comes in another mode, evalstack does what Pillow's
`convert` means by it, and refuses what has no defined 0–255 meaning instead of letting
Pillow clip it (a 16-bit card clipped to 8 bits is flat white):

| mode | what the pipelines do |
|---|---|
| RGB | as is |
| RGBA | resized with its alpha (Pillow premultiplies it), then the alpha is dropped (not composited) |
| L | grey, copied to 3 channels |
| LA | as L; resized with its alpha, then the alpha is dropped |
| P, PA | palette → RGBA (palette transparency becomes alpha), then as RGBA |
| 1 | black/white → L (0 / 255) |
| CMYK, YCbCr, RGBX | → RGB with Pillow's conversion |
| I;16, I;16L, I;16B, I;16N | 16-bit grey scaled to 8 bits (v · 255 / 65535, rounded), then as L |
| I, F | refused: 32-bit integer or float pixels have no defined 0–255 range |
| anything else (LAB, HSV, …) | refused |

`eight_bit` gives an image in RGB, RGBA, L or LA; `three_channels` turns its array into
(H, W, 3). Errors name the mode; the caller adds the item. `decode_rgb` is the one decode path
of the detection profile: the clean letterbox and every corruption-grid cell start from its array,
so a cell at no corruption is the clean input, whatever the file's mode.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from evalstack.sources.images import decode_image
from evalstack.sources.registry import SourceError

EIGHT_BIT = ("RGB", "RGBA", "L", "LA")
_TO_RGB = ("CMYK", "YCbCr", "RGBX")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageModeError(ValueError):
    """An image whose pixels have no defined 8-bit meaning."""


def eight_bit(image: Image.Image) -> Image.Image:
    """The image in RGB, RGBA, L or LA (8 bits per channel), as the table in the module docstring says."""
    mode = image.mode
    if mode in EIGHT_BIT:
        return image
    if mode in ("P", "PA"):
        return image.convert("RGBA")  # palette indices are not colours
    if mode == "1":
        return image.convert("L")
    if mode in _TO_RGB:
        return image.convert("RGB")
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.uint32)  # native order whatever the file's byte order
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    if mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "32-bit float"
        raise ImageModeError(f"image mode {mode} ({kind} pixels) has no defined 0–255 range; convert the image "
                             "to 8-bit RGB (or 16-bit greyscale) before fetching it")
    raise ImageModeError(f"image mode {mode} is not supported; convert the image to 8-bit RGB")


def three_channels(array: np.ndarray) -> np.ndarray:
    """(H, W) grey → (H, W, 3); (H, W, 2) grey + alpha → grey × 3; (H, W, 4) → alpha dropped."""
    if array.ndim == 2:
        return np.stack([array] * 3, axis=-1)
    if array.shape[-1] == 2:
        return np.stack([array[..., 0]] * 3, axis=-1)
    return array[..., :3]


def rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB image (alpha dropped, grey copied), for pipelines that do not resize first."""
    return eight_bit(image).convert("RGB")


def decode_rgb(data: bytes, max_pixels: int, what: str) -> np.ndarray:
    """Encoded bytes → (H, W, 3) uint8 RGB under the pixel cap, modes as the table says; errors name `what`."""
    image = decode_image(data, max_pixels, what)
    try:
        return np.asarray(rgb(image), dtype=np.uint8)
    except ImageModeError as error:
        raise SourceError(f"{what}: {error}") from None
    finally:
        image.close()
