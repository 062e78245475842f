"""Image checks for bytes from a source: a pixel cap before decoding (decompression bombs), full decodes.

Fetch checks every new item once (and a kept one again when the caps or these checks changed:
fetch/plan.py); preprocess decodes with the same guard, so no stage ever hands Pillow more than
`max_pixels`.
"""
from __future__ import annotations

import io
import re

from PIL import Image

from evalstack.sources.errors import SourceError

DEFAULT_MAX_PIXELS = 4096 * 4096
# The formats a source's images may be in. Pillow otherwise tries every plugin it has, and some
# of those hand the bytes to other programs (EPS → Ghostscript) or to little-used decoders.
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")


def open_checked(data: bytes, max_pixels: int, what: str, formats: tuple[str, ...] = IMAGE_FORMATS) -> Image.Image:
    """Open encoded bytes lazily, refusing more than `max_pixels` before any pixel is decoded
    (that is what stops a decompression bomb) and any format outside `formats`."""
    try:
        image = Image.open(io.BytesIO(data), formats=list(formats))
    except Image.UnidentifiedImageError:
        raise SourceError(f"{what}: not a decodable image in an accepted format ({', '.join(formats)}); "
                          f"its first bytes are {bytes(data[:12])!r}") from None
    except Image.DecompressionBombError as error:  # Pillow's own, looser guard fired first
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{pixels.group(1)} pixels" if pixels else "its size"
        raise SourceError(f"{what}: {size} exceeds the cap of {max_pixels} (decompression bomb?)") from None
    except Exception as error:  # Pillow raises many types for bad data
        raise SourceError(f"{what}: not a decodable image ({type(error).__name__}: {error})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise SourceError(f"{what}: {width}×{height} pixels exceeds the cap of {max_pixels} (decompression bomb?)")
    return image


def image_pixels(data: bytes) -> int | None:
    """Width × height from the image's header (no pixel decoded: ~10–20 µs), or None when the bytes do
    not open as an accepted format or Pillow's own bomb guard refuses them."""
    try:
        with Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS)) as image:
            width, height = image.size
    except Exception:  # Pillow raises many types for bad data; the caller treats None as "check again"
        return None
    return width * height


def check_image(data: bytes, max_pixels: int, what: str) -> tuple[int, int]:
    """Validate encoded image bytes without trusting them; returns (width, height).

    `verify()` checks chunk CRCs but misses a PNG cut short after its last complete
    chunk, so the image is also decoded in full (Pillow's default
    `ImageFile.LOAD_TRUNCATED_IMAGES = False` makes that raise). Fetch runs this once
    per new item; an item kept from an earlier fetch is decoded again only under other checks
    (fetch/plan.py), or when it waited in the download area.
    """
    with open_checked(data, max_pixels, what) as image:
        size = image.size
        try:
            image.verify()
        except Exception as error:
            raise SourceError(f"{what}: damaged image data ({type(error).__name__}: {error})") from None
    _load(open_checked(data, max_pixels, what), what)
    return size


def accepted(data: bytes, max_pixels: int) -> bool:
    """Whether `check_image` accepts the bytes (fetch checks kept items again this way: fetch/plan.py)."""
    try:
        check_image(data, max_pixels, "an image")
    except SourceError:
        return False
    return True


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image") -> Image.Image:
    return _load(open_checked(data, max_pixels, what), what)


def _load(image: Image.Image, what: str) -> Image.Image:
    try:
        image.load()
    except Exception as error:
        image.close()
        raise SourceError(f"{what}: truncated or damaged image data ({type(error).__name__}: {error})") from None
    return image
