"""Image decoding: one file or stream becomes an upright 8-bit RGB image; prefetch threads decode ahead.

Labelling runs over folders of hundreds of thousands of files that were never curated: zero-byte
uploads, HTML pages saved as ``.jpg``, truncated downloads, 16-bit PNG scans, CMYK JPEGs from print
workflows, phone photos with an EXIF rotation. One bad file must never end a run, and a good file must
reach the model exactly as a photo viewer shows it. So:

* decoding never raises for a bad file: it returns an :class:`ImageError` with a short human reason
  that goes into the run report (which files to decode is :mod:`glip_label.data.image_discovery`'s job);
* the pixel limit is checked from the header, before any pixel is decoded;
* everything is converted to 8-bit RGB in a documented way (see :func:`to_rgb`).

User files are only ever opened for reading.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS: int = 178_956_970
"""Same value as Pillow's own hard decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS)."""

# Pillow's bomb check reads the process-wide Image.MAX_IMAGE_PIXELS. We replace it with our own
# per-call limit, so the global is lifted only while Image.open parses a header (no pixel is decoded
# there) and under this lock, so concurrent loader threads never restore a stale value.
_PIL_LIMIT_LOCK = threading.Lock()


# ----------------------------------------------------------------------------------------- loading


@dataclass
class LoadedImage:
    """A decoded image, upright (EXIF applied) and 8-bit RGB. ``file_name`` is relative to the root."""

    file_name: str
    image: Image.Image
    width: int
    height: int
    original_mode: str


@dataclass
class ImageError:
    """Why one file could not be used. ``reason`` is a short sentence for the run report;
    ``kind`` is a stable machine-readable code (missing, not_regular, permission, empty, not_image,
    too_large, corrupt, unsupported_mode, out_of_memory, unknown)."""

    file_name: str
    reason: str
    kind: str = "unknown"

    def to_dict(self) -> dict[str, str]:
        return {"file_name": self.file_name, "kind": self.kind, "reason": self.reason}


def _format_mpx(pixels: int, limit: int) -> tuple[str, str]:
    """Megapixel strings with just enough decimals that an over-limit image never reads as equal."""
    for decimals in range(0, 7):
        scale = 10**decimals
        a, b = pixels * scale // 1_000_000, limit * scale // 1_000_000
        if a != b or decimals == 6:
            return f"{a / scale:.{decimals}f}", f"{b / scale:.{decimals}f}"
    raise AssertionError("unreachable")


def _too_large_reason(width: int, height: int, max_pixels: int) -> str:
    got, limit = _format_mpx(width * height, max_pixels)
    return f"image too large: {width}x{height} = {got} Mpx > limit {limit} Mpx (raise --max-pixels)"


def _open_header(fh) -> Image.Image:
    """``Image.open`` (header only) with Pillow's global bomb limit replaced by ours.

    Pillow would warn above 89 Mpx and refuse above 179 Mpx whatever limit the user asked for; the
    caller checks ``max_pixels`` on ``im.size`` right after, before decoding.
    """
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                Image.MAX_IMAGE_PIXELS = None
                return Image.open(fh)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _rgb_from_gray(values: np.ndarray) -> Image.Image:
    """[H, W] uint8 gray -> RGB image."""
    return Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8), mode="L").convert("RGB")


def _on_white(im: Image.Image) -> Image.Image:
    """Composite an image with alpha onto white.

    Why white rather than dropping alpha: pixels under alpha 0 often hold arbitrary (frequently
    black) colour, so dropping alpha can show junk or turn a transparent logo into a black block;
    white is how documents and web pages display these images.
    """
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, scaling high bit depths instead of clipping them.

    * 16-bit gray (``I;16*``) and ``I`` (32-bit int, how some Pillow versions open 16-bit PNGs):
      values within 0..65535 become value / 257 rounded, so 0..65535 maps onto 0..255 (Pillow's
      own ``convert`` clips at 255, which turns most 16-bit scans white); values outside that
      range (signed or 32-bit data) are stretched min..max to 0..255.
    * ``F`` (float): values within 0..1 are scaled by 255, within 0..255 kept, within 0..65535
      divided by 257; other ranges stretched min..max; NaN becomes 0.
    * alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency, premultiplied modes): composited
      on white (see :func:`_on_white`).
    * ``CMYK``, ``YCbCr``, ``L``, ``1``, ``P``, ``HSV``, ``LAB``: Pillow's converter. ICC profiles
      are not applied.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(im).astype(np.int64)  # [H, W]; numpy's dtype handles the byte order
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return _rgb_from_gray((values + 128) // 257)
        return _rgb_from_gray(_stretch(values.astype(np.float64)))
    if mode == "F":
        values = np.asarray(im, dtype=np.float64)  # [H, W]
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        for top in (1.0, 255.0, 65535.0):  # the usual float encodings of 8/16-bit data
            if lo >= 0.0 and hi <= top:
                safe = np.nan_to_num(values, nan=0.0, posinf=top, neginf=0.0)
                return _rgb_from_gray(np.rint(np.clip(safe, 0.0, top) * (255.0 / top)))
        return _rgb_from_gray(_stretch(values))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        return _on_white(im)
    return im.convert("RGB")


def _stretch(values: np.ndarray) -> np.ndarray:
    """Linear min..max -> 0..255 for data with no natural 8-bit scale (finite values only)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    clipped = np.clip(np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo), lo, hi)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((clipped - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _short(exc: BaseException, limit: int = 120) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_image(
    root: Path, file_name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> LoadedImage | ImageError:
    """Decode ``root / file_name`` to an upright RGB image, or explain why not. Never raises for bad
    files (only for programming errors such as a non-string name).

    The pixel limit is checked from the header before decoding, so a 40000x40000 PNG costs a few
    bytes of reading, not gigabytes. ``max_pixels=None`` disables it. The full image is decoded
    here (``load``), so truncated files are caught now and not later inside the model.
    """
    path = Path(root) / file_name
    try:
        st = os.stat(path)
    except FileNotFoundError:
        reason = "broken symbolic link" if os.path.islink(path) else "file not found"
        return ImageError(file_name, reason, "missing")
    except PermissionError:
        return ImageError(file_name, "permission denied", "permission")
    except OSError as exc:
        return ImageError(file_name, f"cannot access file ({exc.strerror or _short(exc)})", "missing")
    if stat.S_ISDIR(st.st_mode):
        return ImageError(file_name, "is a folder, not an image file", "not_regular")
    if not stat.S_ISREG(st.st_mode):
        return ImageError(file_name, "not a regular file", "not_regular")
    if st.st_size == 0:
        return ImageError(file_name, "zero-byte file", "empty")
    try:
        # 64 KiB buffer, filled before _open_header takes its lock: header parsing then reads from
        # memory, so slow (network) storage is not serialised across loader threads.
        fh = open(path, "rb", buffering=1 << 16)  # noqa: SIM115 - closed in the finally below
        fh.peek(1)
    except PermissionError:
        return ImageError(file_name, "permission denied", "permission")
    except OSError as exc:
        return ImageError(file_name, f"cannot open file ({exc.strerror or _short(exc)})", "missing")
    try:
        return decode_image(fh, file_name, max_pixels)
    finally:
        fh.close()


def decode_image(fh, file_name: str, max_pixels: int | None) -> LoadedImage | ImageError:
    """Decode an open binary stream (a file, or in-memory bytes of a tar member or dataset row) like
    :func:`load_image` does once the file is open: same pixel limit, EXIF, RGB rules and error reasons."""
    try:
        im = _open_header(fh)
    except UnidentifiedImageError:
        return ImageError(file_name, "not an image (cannot identify image file)", "not_image")
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        return ImageError(file_name, f"corrupt image header ({_short(exc)})", "corrupt")
    except Exception as exc:  # noqa: BLE001 - a plugin bug on one file must not end the run
        return ImageError(file_name, f"cannot read image ({type(exc).__name__}: {_short(exc)})", "unknown")
    with im:
        width, height = im.size
        if max_pixels is not None and width * height > max_pixels:
            return ImageError(file_name, _too_large_reason(width, height, max_pixels), "too_large")
        original_mode = im.mode
        try:
            im.load()
        except MemoryError:
            return ImageError(file_name, "out of memory while decoding", "out_of_memory")
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
            return ImageError(file_name, f"truncated or corrupt image data ({_short(exc)})", "corrupt")
        except Exception as exc:  # noqa: BLE001
            reason = f"cannot decode image ({type(exc).__name__}: {_short(exc)})"
            return ImageError(file_name, reason, "unknown")
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not cost the pixels
            logger.debug("%s: ignoring unreadable EXIF orientation (%s)", file_name, exc)
            upright = im
        try:
            rgb = to_rgb(upright)
        except MemoryError:
            return ImageError(file_name, "out of memory while converting to RGB", "out_of_memory")
        except (ValueError, OSError) as exc:
            return ImageError(
                file_name, f"unsupported colour mode {original_mode} ({_short(exc)})", "unsupported_mode"
            )
        if rgb is im:
            rgb = im.copy()  # `im` is closed when the with-block ends
        return LoadedImage(file_name, rgb, rgb.width, rgb.height, original_mode)


# ----------------------------------------------------------------------------------- prefetching


@dataclass
class ImageLoader:
    """Decodes images in background threads so that decoding overlaps model compute.

    Threads rather than processes: Pillow releases the GIL while decoding, and threads avoid
    pickling megapixel arrays between processes. At most ``prefetch`` images are in flight or
    decoded-but-not-consumed, which bounds memory whatever the folder size.
    ``num_workers=0`` decodes in the calling thread (debugging, profiling).
    """

    num_workers: int = 2
    prefetch: int = 8
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {self.prefetch}")

    def iter_images(self, root: Path, file_names: Iterable[str]) -> Iterator[LoadedImage | ImageError]:
        """Yield one result per name, in input order. ``file_names`` may be a lazy iterable.

        If the consumer stops early (break, exception, ``close()``), queued decodes are cancelled
        and the pool is shut down before the generator finishes closing.
        """
        root = Path(root)
        if self.num_workers == 0:
            for name in file_names:
                yield load_image(root, name, self.max_pixels)
            return
        window = self.prefetch
        names = iter(file_names)
        pending: deque[Future[LoadedImage | ImageError]] = deque()
        pool = ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="glip-image-loader")
        try:
            for name in names:
                pending.append(pool.submit(load_image, root, name, self.max_pixels))
                if len(pending) >= window:
                    break
            while pending:
                result = pending.popleft().result()
                # Refill before yielding so the workers keep decoding while the consumer computes.
                for name in names:
                    pending.append(pool.submit(load_image, root, name, self.max_pixels))
                    break
                yield result
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def iter_images(
    root: Path,
    file_names: Iterable[str],
    num_workers: int = 2,
    prefetch: int = 8,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Iterator[LoadedImage | ImageError]:
    """Functional form of :meth:`ImageLoader.iter_images`."""
    return ImageLoader(num_workers, prefetch, max_pixels).iter_images(root, file_names)
