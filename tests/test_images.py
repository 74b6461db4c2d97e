"""Image intake: discovery over messy folders, robust decoding, ordered background prefetch.

Every bad file is built here with Pillow (nothing binary is checked in), so each test states
exactly what is wrong with the file it feeds in.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glip_label.data import images as images_module
from glip_label.data.image_discovery import IMAGE_EXTENSIONS, discover_images
from glip_label.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    ImageLoader,
    LoadedImage,
    iter_images,
    load_image,
)

# ------------------------------------------------------------------------------------ builders


def _rgb(width: int = 32, height: int = 24, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


def _jpeg_bytes(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def _png_with_claimed_size(width: int, height: int, mode: str = "L") -> bytes:
    """A real 1x1 PNG whose IHDR claims another size (CRC recomputed, so only the size lies)."""
    buf = io.BytesIO()
    Image.new(mode, (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:20] = width.to_bytes(4, "big")
    data[20:24] = height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _two_colour_photo(width: int = 64, height: int = 32) -> Image.Image:
    """Left half red, right half blue: orientation is readable from any pixel."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(arr, mode="RGB")


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".cache").mkdir()

    _rgb().save(root / "good.jpg", quality=95)
    _rgb(seed=1).save(root / "sub" / "deeper" / "nested.png")
    _rgb(seed=2).save(root / "PHOTO.JPG", format="JPEG")
    _rgb(seed=3).save(root / "Mixed.Png", format="PNG")
    _rgb(seed=4).save(root / "sub" / "bitmap.bmp")
    _rgb(seed=5).save(root / "sub" / "web.webp")
    _rgb(seed=6).save(root / "sub" / "scan.tiff")

    full = _jpeg_bytes(_rgb(128, 128, seed=7))
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])  # valid header, data cut
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("<html>not found</html>\n")
    (root / "huge.png").write_bytes(_png_with_claimed_size(40_000, 40_000))
    (root / "locked.jpg").write_bytes(_jpeg_bytes(_rgb()))
    os.chmod(root / "locked.jpg", 0)

    (root / "notes.md").write_text("not an image extension, never listed\n")
    _rgb().save(root / ".hidden.jpg")
    _rgb().save(root / ".cache" / "thumb.jpg")
    os.symlink("..", root / "sub" / "loop")  # sub/loop -> photos: a cycle
    os.symlink("missing-target.jpg", root / "dangling.jpg")
    os.mkfifo(root / "pipe.jpg")  # opening it for reading would block forever
    return root


# ------------------------------------------------------------------------------------ discovery


def test_extensions_constant_is_lower_case_and_complete():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"} == set(IMAGE_EXTENSIONS)


def test_folder_discovery_is_sorted_recursive_and_reports_loops(messy_folder: Path):
    skipped: list[tuple[str, str]] = []
    root, names = discover_images(messy_folder, on_skip=lambda p, why: skipped.append((p, why)))

    assert root == Path(os.path.abspath(messy_folder))
    assert names == sorted(names)
    assert names == sorted(
        [
            "Mixed.Png",
            "PHOTO.JPG",
            "dangling.jpg",
            "empty.jpg",
            "good.jpg",
            "huge.png",
            "locked.jpg",
            "sub/bitmap.bmp",
            "sub/deeper/nested.png",
            "sub/scan.tiff",
            "sub/web.webp",
            "text.jpg",
            "truncated.jpg",
        ]
    )
    assert skipped[0] == ("pipe.jpg", "not a regular file")
    assert skipped[1][0] == "sub/loop" and "symlink loop" in skipped[1][1]
    assert len(skipped) == 2


def test_folder_discovery_non_recursive_and_default_report(messy_folder: Path, caplog):
    _, names = discover_images(messy_folder, recursive=False)
    assert all("/" not in n for n in names)
    assert "good.jpg" in names and "PHOTO.JPG" in names
    with caplog.at_level("WARNING", logger="glip_label.data.image_discovery"):
        discover_images(messy_folder)
    assert any("sub/loop" in rec.getMessage() and "symlink loop" in rec.getMessage() for rec in caplog.records)


def test_symlinked_folder_alias_is_walked_once(tmp_path: Path):
    real = tmp_path / "root" / "real"
    real.mkdir(parents=True)
    _rgb().save(real / "a.jpg")
    os.symlink("real", tmp_path / "root" / "zz_alias")
    os.symlink(real, tmp_path / "root" / "also")  # absolute link to the same folder
    skipped: list[tuple[str, str]] = []
    _, names = discover_images(tmp_path / "root", on_skip=lambda p, why: skipped.append((p, why)))
    assert names == ["also/a.jpg"]  # first in sorted order wins, deterministically
    assert sorted(p for p, _ in skipped) == ["real", "zz_alias"]
    assert all("same folder as 'also'" in why for _, why in skipped)


def test_glob_source(messy_folder: Path):
    root, names = discover_images(str(messy_folder / "**" / "*.png"))
    assert root == Path(os.path.abspath(messy_folder))
    assert names == ["huge.png", "sub/deeper/nested.png"]  # ** spans zero or more folders; case-sensitive

    root, names = discover_images(str(messy_folder / "sub" / "*.*"))
    assert root == Path(os.path.abspath(messy_folder / "sub"))
    assert names == ["bitmap.bmp", "scan.tiff", "web.webp"]  # no recursion without **

    _, names = discover_images(str(messy_folder / "*" / "*.png"))
    assert names == []  # nested.png is two folders down

    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_images(str(messy_folder / "nope" / "*.jpg"))


def test_list_file_source(tmp_path: Path):
    (tmp_path / "imgs").mkdir()
    _rgb().save(tmp_path / "imgs" / "a.jpg")
    _rgb().save(tmp_path / "b.png")
    list_file = tmp_path / "todo.txt"
    list_file.write_text(
        "\ufeff# my selection\n"
        "\n"
        "imgs/a.jpg\n"
        "./b.png\r\n"
        f"{tmp_path / 'imgs' / 'a.jpg'}\n"  # absolute duplicate of the first entry
        "   \n"
        "missing.jpg\n",
        encoding="utf-8",
    )
    root, names = discover_images(list_file)
    assert root == Path(os.path.abspath(tmp_path))
    assert names == ["b.png", "imgs/a.jpg", "missing.jpg"]
    assert load_image(root, "missing.jpg") == ImageError("missing.jpg", "file not found", "missing")


def test_missing_and_empty_sources(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_images(tmp_path / "no-such-folder")
    (tmp_path / "empty").mkdir()
    assert discover_images(tmp_path / "empty") == (Path(os.path.abspath(tmp_path / "empty")), [])
    (tmp_path / "captions.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported image source"):
        discover_images(tmp_path / "captions.csv")
    _rgb().save(tmp_path / "single.webp")
    assert discover_images(tmp_path / "single.webp") == (Path(os.path.abspath(tmp_path)), ["single.webp"])


# ------------------------------------------------------------------------------------- loading


def test_each_bad_file_gets_its_reason(messy_folder: Path):
    root, names = discover_images(messy_folder, on_skip=lambda p, why: None)
    results = {n: load_image(root, n) for n in names}

    good = ["Mixed.Png", "PHOTO.JPG", "good.jpg", "sub/bitmap.bmp", "sub/deeper/nested.png"]
    good += ["sub/scan.tiff", "sub/web.webp"]
    for name in good:
        res = results[name]
        assert isinstance(res, LoadedImage), (name, res)
        assert res.image.mode == "RGB" and res.image.size == (32, 24) == (res.width, res.height)
        assert res.file_name == name

    expected = {
        "empty.jpg": ("empty", "zero-byte file"),
        "text.jpg": ("not_image", "not an image (cannot identify image file)"),
        "truncated.jpg": ("corrupt", "truncated or corrupt image data"),
        "huge.png": ("too_large", "image too large: 40000x40000 = 1600 Mpx > limit 178 Mpx (raise --max-pixels)"),
        "dangling.jpg": ("missing", "broken symbolic link"),
    }
    for name, (kind, reason) in expected.items():
        res = results[name]
        assert isinstance(res, ImageError), (name, res)
        assert res.kind == kind
        assert res.reason.startswith(reason), res.reason
        assert res.to_dict() == {"file_name": name, "kind": kind, "reason": res.reason}

    assert load_image(messy_folder, "pipe.jpg") == ImageError("pipe.jpg", "not a regular file", "not_regular")
    assert load_image(messy_folder, "sub") == ImageError("sub", "is a folder, not an image file", "not_regular")

    locked = results["locked.jpg"]
    if os.geteuid() == 0:
        # root ignores file modes, so chmod 000 cannot produce EACCES here; the file decodes.
        assert isinstance(locked, LoadedImage)
    else:
        assert locked == ImageError("locked.jpg", "permission denied", "permission")


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path):
    # 15000 x 12000 = 180 Mpx: above Pillow's own hard limit (179 Mpx) and above its warning level.
    (tmp_path / "big.png").write_bytes(_png_with_claimed_size(15_000, 12_000))
    pil_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning/Error may escape
        res = load_image(tmp_path, "big.png", max_pixels=50_000_000)
    assert isinstance(res, ImageError) and res.kind == "too_large"
    assert res.reason == "image too large: 15000x12000 = 180 Mpx > limit 50 Mpx (raise --max-pixels)"
    assert pil_limit == Image.MAX_IMAGE_PIXELS  # the global is restored

    # Within our limit (here: none), the header passes and the lie is found by decoding the 1-pixel data.
    res = load_image(tmp_path, "big.png", max_pixels=None)
    assert isinstance(res, ImageError) and res.kind == "corrupt", res


def test_limit_message_never_reads_as_equal():
    reason = images_module._too_large_reason(13_379, 13_377, DEFAULT_MAX_PIXELS)  # 178.97 Mpx
    assert "= 178.97 Mpx > limit 178.95 Mpx" in reason


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path):
    values = np.linspace(0, 65535, 16 * 32).round().astype(np.uint16).reshape(16, 32)
    Image.fromarray(values).save(tmp_path / "depth16.png")
    with Image.open(tmp_path / "depth16.png") as probe:
        assert probe.mode in ("I;16", "I")

    res = load_image(tmp_path, "depth16.png")
    assert isinstance(res, LoadedImage)
    assert res.original_mode in ("I;16", "I")
    rgb = np.asarray(res.image).astype(np.int64)
    assert rgb.shape == (16, 32, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert np.abs(rgb[..., 0] - values / 257.0).max() <= 0.5
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 200  # full range, no clipping


def test_other_high_depth_modes_are_scaled(tmp_path: Path):
    be = Image.frombytes("I;16B", (3, 1), np.array([0, 257 * 100, 65535], dtype=">u2").tobytes())
    assert np.asarray(images_module.to_rgb(be))[0, :, 0].tolist() == [0, 100, 255]
    as_int = Image.fromarray(np.array([[0, 257 * 7, 65535]], dtype=np.int32), mode="I")
    assert np.asarray(images_module.to_rgb(as_int))[0, :, 0].tolist() == [0, 7, 255]
    signed = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32), mode="I")
    assert np.asarray(images_module.to_rgb(signed))[0, :, 0].tolist() == [0, 128, 255]
    unit_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    assert np.asarray(images_module.to_rgb(unit_float))[0, :, 0].tolist() == [0, 128, 255]
    wide_float = Image.fromarray(np.array([[-1.0, 0.0, 1.0e6]], dtype=np.float32), mode="F")
    assert np.asarray(images_module.to_rgb(wide_float))[0, :, 0].tolist() == [0, 0, 255]


def test_cmyk_jpeg(tmp_path: Path):
    photo = _two_colour_photo()
    photo.convert("CMYK").save(tmp_path / "print.jpg", quality=95)
    res = load_image(tmp_path, "print.jpg")
    assert isinstance(res, LoadedImage) and res.original_mode == "CMYK" and res.image.mode == "RGB"
    diff = np.abs(np.asarray(res.image).astype(int) - np.asarray(photo).astype(int))
    assert diff.mean() < 8


def test_exif_orientation_is_applied(tmp_path: Path):
    photo = _two_colour_photo(64, 32)  # stored landscape: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    photo.save(tmp_path / "phone.jpg", quality=95, exif=exif.tobytes())

    res = load_image(tmp_path, "phone.jpg")
    assert isinstance(res, LoadedImage)
    assert (res.width, res.height) == (32, 64) == res.image.size
    arr = np.asarray(res.image).astype(int)
    # Turning the stored picture 90 degrees clockwise puts its left (red) half on top.
    assert np.abs(arr[8, 16] - (255, 0, 0)).max() < 30
    assert np.abs(arr[56, 16] - (0, 0, 255)).max() < 30


def test_palette_with_transparency_composites_on_white(tmp_path: Path):
    pal = Image.new("P", (8, 4), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    pal.paste(1, (4, 0, 8, 4))
    pal.save(tmp_path / "logo.png", transparency=0)  # index 0 (black) is transparent
    res = load_image(tmp_path, "logo.png")
    assert isinstance(res, LoadedImage) and res.original_mode == "P"
    arr = np.asarray(res.image)
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[0, 7].tolist() == [255, 0, 0]


def test_rgba_and_la_composite_on_white(tmp_path: Path):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[:, 0] = (0, 0, 0, 0)  # invisible black -> white
    rgba[:, 1] = (0, 200, 0, 255)  # opaque green stays
    rgba[:, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "sticker.png")
    res = load_image(tmp_path, "sticker.png")
    assert isinstance(res, LoadedImage) and res.original_mode == "RGBA"
    arr = np.asarray(res.image).astype(int)
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[0, 1].tolist() == [0, 200, 0]
    assert np.abs(arr[0, 2] - 127).max() <= 1

    Image.fromarray(rgba[..., [1, 3]], mode="LA").save(tmp_path / "gray_alpha.png")
    res = load_image(tmp_path, "gray_alpha.png")
    assert isinstance(res, LoadedImage) and np.asarray(res.image)[0, 0].tolist() == [255, 255, 255]


def test_grayscale_becomes_three_equal_channels(tmp_path: Path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray, mode="L").save(tmp_path / "xray.png")
    res = load_image(tmp_path, "xray.png")
    assert isinstance(res, LoadedImage) and res.original_mode == "L"
    arr = np.asarray(res.image)
    assert arr.shape == (8, 8, 3) and all((arr[..., c] == gray).all() for c in range(3))


def test_load_never_touches_user_files(messy_folder: Path):
    root, names = discover_images(messy_folder, on_skip=lambda p, why: None)
    before = {n: (root / n).read_bytes() for n in names if (root / n).exists() and n != "locked.jpg"}
    stamps = {n: os.stat(root / n).st_mtime_ns for n in before}
    for name in names:
        load_image(root, name)
    assert {n: (root / n).read_bytes() for n in before} == before
    assert {n: os.stat(root / n).st_mtime_ns for n in before} == stamps


# ----------------------------------------------------------------------------------- prefetching


def _make_order_folder(tmp_path: Path, count: int = 24) -> tuple[Path, list[str]]:
    for i in range(count):
        if i % 5 == 3:
            (tmp_path / f"img{i:02d}.jpg").write_bytes(b"")  # errors interleaved with images
        else:
            _rgb(16 + 8 * (i % 4), 16, seed=i).save(tmp_path / f"img{i:02d}.png")
    names = sorted(p.name for p in tmp_path.iterdir())
    rng = np.random.default_rng(0)
    return tmp_path, [names[i] for i in rng.permutation(len(names))]  # not sorted: order must be kept


def test_iter_images_keeps_input_order(tmp_path: Path):
    root, names = _make_order_folder(tmp_path)
    results = list(iter_images(root, names, num_workers=2, prefetch=3))
    assert [r.file_name for r in results] == names
    for r in results:
        assert isinstance(r, ImageError) == r.file_name.endswith(".jpg")
    serial = list(ImageLoader(num_workers=0).iter_images(root, names))
    assert [(r.file_name, type(r)) for r in serial] == [(r.file_name, type(r)) for r in results]


def test_iter_images_prefetch_is_bounded_and_lazy(tmp_path: Path):
    root, names = _make_order_folder(tmp_path)
    pulled: list[str] = []

    def lazy_names():
        for n in names:
            pulled.append(n)
            yield n

    it = ImageLoader(num_workers=2, prefetch=3).iter_images(root, lazy_names())
    assert pulled == []  # nothing starts before the first next()
    first = next(it)
    assert first.file_name == names[0]
    assert len(pulled) <= 3 + 1  # the window plus the refill for the item just handed out
    it.close()


def test_iter_images_shuts_pool_down_when_consumer_stops(tmp_path: Path):
    root, names = _make_order_folder(tmp_path)

    def new_loader_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("glip-image-loader")} - before

    before = {t for t in threading.enumerate() if t.name.startswith("glip-image-loader")}
    for i, _ in enumerate(iter_images(root, names, num_workers=2, prefetch=4)):
        if i == 2:
            break  # the for-loop drops the generator; CPython closes it right away
    assert new_loader_threads() == set()

    it = iter_images(root, names, num_workers=2, prefetch=4)
    next(it)
    assert new_loader_threads() != set()
    it.close()
    assert new_loader_threads() == set()


def test_loader_rejects_bad_settings():
    with pytest.raises(ValueError, match="prefetch"):
        ImageLoader(prefetch=0)
    with pytest.raises(ValueError, match="num_workers"):
        ImageLoader(num_workers=-1)
