"""The one decode/resize/blur path: every mode and format, EXIF, bombs, bad input, parity."""

from __future__ import annotations

import csv
import io
import pickle
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from scalpnet.data import preprocess
from scalpnet.data.preprocess import load_image, preprocess_image, to_model_input
from scalpnet.errors import IMAGE_PROBLEMS, InvalidImageError, ScalpNetError

H, W = 30, 40


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """(30, 40, 3) uint8: smooth gradients, so lossy formats stay close."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 6, y * 8, 255 - x * 3 - y * 2], axis=2).clip(0, 255).astype(np.uint8)


def save(tmp_path: Path, image: Image.Image, name: str, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def assert_close(a: np.ndarray, b: np.ndarray, tolerance: float) -> None:
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).mean() <= tolerance


def assert_rgb(array: np.ndarray, shape=(H, W)) -> None:
    assert array.dtype == np.uint8
    assert array.shape == (*shape, 3)


# --------------------------------------------------------------------------- formats
@pytest.mark.parametrize(
    ("name", "kwargs", "tolerance"),
    [
        ("a.png", {}, 0),
        ("a.bmp", {}, 0),
        ("a.tif", {}, 0),
        ("a.tiff", {"compression": "tiff_lzw"}, 0),
        ("a.webp", {"lossless": True}, 0),
        ("lossy.webp", {"quality": 90}, 6),
        ("a.jpg", {"quality": 95}, 4),
        ("a.jpeg", {"quality": 95}, 4),
    ],
)
def test_reads_every_common_format(tmp_path, rgb, name, kwargs, tolerance):
    path = save(tmp_path, Image.fromarray(rgb), name, **kwargs)
    out = load_image(path)
    assert_rgb(out)
    assert_close(out, rgb, tolerance)


def test_gif_gives_the_first_frame_of_an_animation(tmp_path):
    red = Image.new("RGB", (W, H), (255, 0, 0))
    blue = Image.new("RGB", (W, H), (0, 0, 255))
    path = save(tmp_path, red, "anim.gif", save_all=True, append_images=[blue], duration=100)
    assert Image.open(path).n_frames == 2
    out = load_image(path)
    assert_rgb(out)
    assert (out == [255, 0, 0]).all()


def test_reads_heic(tmp_path, rgb):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    path = save(tmp_path, Image.fromarray(rgb), "photo.heic", format="HEIF", quality=95)
    out = load_image(path)
    assert_rgb(out)
    assert_close(out, rgb, 8)


# --------------------------------------------------------------------------- modes
def test_greyscale_l_becomes_three_equal_channels(tmp_path, rgb):
    grey = Image.fromarray(rgb).convert("L")
    out = load_image(save(tmp_path, grey, "l.png"))
    assert_rgb(out)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], np.asarray(grey))


def test_palette_image(tmp_path, rgb):
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = load_image(save(tmp_path, palette, "p.png"))
    np.testing.assert_array_equal(out, np.asarray(palette.convert("RGB")))


def test_palette_transparency_is_composited_on_white(tmp_path):
    data = np.zeros((H, W), np.uint8)
    data[:, W // 2 :] = 1
    image = Image.fromarray(data, mode="L").convert("P")
    image.putpalette([200, 0, 0, 0, 0, 200] + [0] * 762)
    path = save(tmp_path, image, "pt.png", transparency=1)
    assert "transparency" in Image.open(path).info
    out = load_image(path)
    assert (out[:, : W // 2] == [200, 0, 0]).all()
    assert (out[:, W // 2 :] == 255).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(tmp_path, mode):
    colour = (0, 0, 0, 0) if mode == "RGBA" else (0, 0)
    image = Image.new(mode, (W, H), colour)  # fully transparent black
    opaque = (20, 40, 60, 255) if mode == "RGBA" else (50, 255)
    image.paste(Image.new(mode, (W // 2, H), opaque), (0, 0))
    half = (20, 40, 60, 128) if mode == "RGBA" else (50, 128)
    image.paste(Image.new(mode, (W // 4, H), half), (W // 2, 0))
    out = load_image(save(tmp_path, image, f"{mode}.png"))
    assert_rgb(out)
    expected = (20, 40, 60) if mode == "RGBA" else (50, 50, 50)
    assert (out[:, 0] == expected).all()
    assert (out[:, -1] == 255).all()  # transparent -> white, not black
    blended = out[0, W // 2 + 1].astype(int)
    assert np.allclose(blended, (np.array(expected) * 128 + 255 * 127) / 255, atol=2)


@pytest.mark.parametrize("name", ["cmyk.jpg", "cmyk.tif"])
def test_cmyk(tmp_path, rgb, name):
    cmyk = Image.fromarray(rgb).convert("CMYK")
    path = save(tmp_path, cmyk, name)
    assert Image.open(path).mode == "CMYK"
    out = load_image(path)
    assert_rgb(out)
    assert_close(out, np.asarray(Image.open(path).convert("RGB")), 1)
    assert_close(out, rgb, 8)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    grey16 = (np.arange(H * W, dtype=np.uint32).reshape(H, W) * 65535 // (H * W - 1)).astype(
        np.uint16
    )
    path = save(tmp_path, Image.fromarray(grey16), "i16.png")
    assert Image.open(path).mode.startswith("I")
    out = load_image(path)
    assert_rgb(out)
    expected = np.rint(grey16 / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert out.max() == 255 and out.min() == 0


def test_one_bit_image(tmp_path):
    bits = np.zeros((H, W), bool)
    bits[:, : W // 2] = True
    path = save(tmp_path, Image.fromarray(bits), "bits.png")
    assert Image.open(path).mode == "1"
    out = load_image(path)
    assert (out[:, : W // 2] == 255).all() and (out[:, W // 2 :] == 0).all()


# --------------------------------------------------------------------------- EXIF
def test_exif_orientation_6_comes_out_upright(tmp_path):
    # Stored landscape, left half red / right half blue; Orientation 6 = rotate 90° clockwise
    # to display, so the photo is portrait with red on top.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path, Image.fromarray(stored), "rot.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.shape == (40, 20, 3)
    assert_close(out[:15], np.full((15, 20, 3), (255, 0, 0)), 10)
    assert_close(out[-15:], np.full((15, 20, 3), (0, 0, 255)), 10)


# --------------------------------------------------------------------------- bombs
def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB but that carries almost no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def jpeg_with_declared_size(tmp_path: Path, width: int, height: int) -> Path:
    """A real small JPEG whose SOF header is edited to claim width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("width", [8000, 30000, 100_000])
def test_png_declaring_huge_dimensions_is_refused_before_decoding(tmp_path, width):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(width, width))
    with pytest.raises(InvalidImageError, match=r"megapixels|too large"):
        load_image(path)


def test_jpeg_declaring_huge_dimensions_is_refused_by_our_cap(tmp_path):
    path = jpeg_with_declared_size(tmp_path, 9000, 9000)  # 81 MP: above our 50 MP cap
    assert Image.open(path).size == (9000, 9000)
    with pytest.raises(InvalidImageError, match="81 megapixels; the limit is 50") as info:
        load_image(path)
    assert info.value.reason == "too_many_pixels"
    assert info.value.details == {"width": 9000, "height": 9000, "megapixels": 81.0, "limit": 50.0}
    # The code survives the trip back from a worker process (prepare --workers).
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.reason, copy.details, str(copy)) == (
        "too_many_pixels",
        info.value.details,
        str(info.value),
    )


def test_an_unknown_reason_code_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown image problem"):
        InvalidImageError("x", "blurry")


def test_max_pixels_is_a_parameter(tmp_path, rgb):
    path = save(tmp_path, Image.fromarray(rgb), "small.png")
    with pytest.raises(InvalidImageError, match="megapixels"):
        load_image(path, max_pixels=H * W - 1)
    assert_rgb(load_image(path, max_pixels=H * W))


# --------------------------------------------------------------------------- bad input
def truncated_jpeg(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.tile(rgb, (8, 8, 1))).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("empty", "empty"),
        ("text", "not an image"),
        ("truncated", "corrupt or truncated"),
        ("random", "not an image"),
        ("missing", "no such image file"),
        ("folder", "is a folder, not an image file"),
    ],
)
def test_bad_files_raise_invalid_image_error_with_a_readable_message(tmp_path, rgb, kind, expected):
    """The English message, and a reason code an interface can say in another language."""
    path = tmp_path / "photo.jpg"
    contents = {
        "empty": b"",
        "text": b"this is not a photo, just a text file named .jpg\n",
        "truncated": truncated_jpeg(rgb),
        "random": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
    }
    if kind in contents:
        path.write_bytes(contents[kind])
    if kind == "folder":
        path.mkdir()
    with pytest.raises(InvalidImageError) as info:
        load_image(path)
    message = str(info.value)
    assert expected in message
    assert "photo.jpg" in message
    assert "\n" not in message and "Traceback" not in message
    assert isinstance(info.value, ScalpNetError)
    reasons = {"text": "not_an_image", "random": "not_an_image", "truncated": "corrupt"}
    reasons["folder"] = "unreadable"
    assert info.value.reason == reasons.get(kind, kind)
    assert info.value.reason in IMAGE_PROBLEMS
    with pytest.raises(InvalidImageError):
        preprocess_image(path)


@pytest.mark.parametrize("source", [b"", bytearray(), io.BytesIO(b""), b"GIF89a broken"])
def test_bad_bytes_and_uploads_raise_invalid_image_error(source):
    with pytest.raises(InvalidImageError):
        load_image(source)


def test_unsupported_source_type_is_a_programming_error():
    with pytest.raises(TypeError):
        load_image(12345)


# --------------------------------------------------------------------------- sources
def test_path_str_bytes_and_file_objects_give_the_same_pixels(tmp_path, rgb):
    path = save(tmp_path, Image.fromarray(rgb), "a.png")
    data = path.read_bytes()
    expected = load_image(path)
    for source in (str(path), data, bytearray(data), memoryview(data), io.BytesIO(data)):
        np.testing.assert_array_equal(load_image(source), expected)
    with path.open("rb") as handle:
        np.testing.assert_array_equal(load_image(handle), expected)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_loaded_arrays_are_writable(tmp_path, rgb, mode):
    out = load_image(save(tmp_path, Image.fromarray(rgb).convert(mode), "a.png"))
    assert out.flags.writeable  # callers (overlays, augmentation) may draw on it


# --------------------------------------------------------------------------- real photos
def test_every_real_photo_loads_and_preprocesses(real_scalp_dir):
    with (real_scalp_dir / "manifest.csv").open() as handle:
        files = [row["file"] for row in csv.DictReader(handle)]
    assert len(files) == 73
    for name in files:
        rgb = load_image(real_scalp_dir / name)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert min(rgb.shape[:2]) >= 100, name
        out = preprocess_image(real_scalp_dir / name)
        assert out.shape == (256, 256, 3) and out.dtype == np.uint8


# --------------------------------------------------------------------------- model input
@pytest.mark.parametrize("size", [256, 64])
def test_to_model_input_is_area_resize_then_median_blur(size):
    image = np.random.default_rng(1).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    out = to_model_input(image, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    expected = cv2.medianBlur(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), 3)
    np.testing.assert_array_equal(out, expected)
    # ... and the blur really ran: the plain resize differs
    assert not np.array_equal(out, cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))


def test_to_model_input_enlarges_small_images_with_bicubic():
    image = np.random.default_rng(2).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    expected = cv2.medianBlur(cv2.resize(image, (256, 256), interpolation=cv2.INTER_CUBIC), 3)
    np.testing.assert_array_equal(to_model_input(image), expected)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((50, 50), np.uint8), np.zeros((50, 50, 4), np.uint8), np.zeros((50, 50, 3))],
)
def test_to_model_input_rejects_other_shapes_and_dtypes(bad):
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(bad)


def test_preprocess_image_equals_load_then_model_input_for_lossless_files(tmp_path):
    image = np.random.default_rng(3).integers(0, 256, (500, 700, 3), dtype=np.uint8)
    path = save(tmp_path, Image.fromarray(image), "big.png")
    np.testing.assert_array_equal(preprocess_image(path), to_model_input(image))


def test_reduced_jpeg_decoding_stays_close_to_a_full_decode(tmp_path):
    # A large JPEG is decoded at 1/4 scale (DCT scaling) when that still covers 256 px.
    y, x = np.mgrid[0:1200, 0:1600]
    smooth = np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8)
    path = save(tmp_path, Image.fromarray(smooth), "big.jpg", quality=92)
    full = to_model_input(np.asarray(Image.open(path).convert("RGB")))
    fast = preprocess_image(path)
    assert_close(fast, full, 3.0)
    assert preprocess.DEFAULT_SIZE == 256
