from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from src.data import images
from src.errors import UserError


def _rgb(h=6, w=5, seed=0):
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def test_read_png_8bit_is_rgb_in_unit_range(tmp_path):
    bgr = np.zeros((4, 3, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's order
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, bgr)
    img = images.read_image(path)
    assert img.shape == (4, 3, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img[0, 0], [0.0, 0.0, 1.0])


def test_read_png_16bit_gray_and_alpha(tmp_path):
    gray = np.full((3, 4), 65535 // 5, np.uint16)
    p16 = str(tmp_path / "g16.png")
    cv2.imwrite(p16, gray)
    img = images.read_image(p16)
    assert img.shape == (3, 4, 3)
    np.testing.assert_allclose(img, (65535 // 5) / 65535.0, rtol=1e-6)

    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 2] = 255
    pa = str(tmp_path / "alpha.png")
    cv2.imwrite(pa, bgra)
    np.testing.assert_allclose(images.read_image(pa)[0, 0], [1.0, 0.0, 0.0])


def test_read_jpg_and_non_ascii_path(tmp_path):
    d = tmp_path / "数据"
    d.mkdir()
    path = str(d / "x.jpg")
    ok, buf = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    buf.tofile(path)
    img = images.read_image(path)
    assert img.shape == (8, 8, 3)
    assert abs(float(img.mean()) - 128 / 255) < 0.02


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_read_bad_files_name_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    if content is None:
        path = tmp_path / "missing.png"
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=str(path.name)):
        images.read_image(str(path))


def test_read_truncated_png(tmp_path):
    good = str(tmp_path / "good.png")
    cv2.imwrite(good, (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    data = open(good, "rb").read()
    bad = tmp_path / "trunc.png"
    bad.write_bytes(data[:len(data) // 3])
    with pytest.raises(UserError, match="trunc.png"):
        images.read_image(str(bad))


def test_save_png_roundtrip(tmp_path):
    img = _rgb(5, 7)
    path = str(tmp_path / "sub" / "o.png")
    images.save_png(path, img)
    back = images.read_image(path)
    assert np.max(np.abs(back - img)) <= 0.5 / 255 + 1e-6
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.endswith(".tmp")]


def test_random_crop_is_paired_and_deterministic():
    a = _rgb(10, 12)
    b = a + 1.0
    ca, cb = images.random_crop(np.random.default_rng(3), a, b, size=4)
    assert ca.shape == (4, 4, 3)
    np.testing.assert_array_equal(cb, ca + 1.0)
    again = images.random_crop(np.random.default_rng(3), a, size=4)[0]
    np.testing.assert_array_equal(again, ca)
    # The crop is a window of the source.
    hits = [(y, x) for y in range(7) for x in range(9) if np.array_equal(a[y:y + 4, x:x + 4], ca)]
    assert len(hits) == 1


def test_random_crop_scaled_pair_chw():
    raw = np.random.default_rng(0).random((4, 6, 8)).astype(np.float32)  # packed raw, H/2
    rgb = np.repeat(np.repeat(raw[:3], 2, axis=1), 2, axis=2)            # target at 2x
    cr, cg = images.random_crop(np.random.default_rng(1), raw, rgb, size=(3, 4), chw=True,
                                scales=(1, 2))
    assert cr.shape == (4, 3, 4) and cg.shape == (3, 6, 8)
    np.testing.assert_array_equal(cg[:, ::2, ::2], cr[:3])


def test_random_crop_too_small_names_sizes():
    with pytest.raises(UserError, match=r"5x4 is smaller than the crop 8x8"):
        images.random_crop(np.random.default_rng(0), _rgb(5, 4), size=8)


def test_random_flip_rot_is_paired_and_covers_all_transforms():
    a = np.arange(2 * 3 * 1, dtype=np.float32).reshape(2, 3, 1)
    seen = set()
    for seed in range(64):
        x, y = images.random_flip_rot(np.random.default_rng(seed), a, a * 2)
        np.testing.assert_array_equal(y, x * 2)
        seen.add(x.tobytes() + bytes(x.shape))
    assert len(seen) == 8  # the dihedral group of a non-square image
    only_h = {images.random_flip_rot(np.random.default_rng(s), a, rot90=False)[0].tobytes()
              for s in range(32)}
    assert only_h == {a.tobytes(), a[:, ::-1].tobytes()}


def test_center_crop_and_to_chw():
    a = _rgb(7, 9)
    c = images.center_crop(a, 3, 5)
    np.testing.assert_array_equal(c, a[2:5, 2:7])
    chw = images.to_chw(a)
    assert chw.shape == (3, 7, 9) and chw.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(images.to_hwc(chw), a)
    np.testing.assert_array_equal(images.center_crop(chw, 3, 5, chw=True), images.to_chw(c))


def test_pad_to_multiple_reflect_and_original_size():
    chw = images.to_chw(_rgb(5, 7))
    padded, (h, w) = images.pad_to_multiple(chw, 4)
    assert padded.shape == (3, 8, 8) and (h, w) == (5, 7)
    np.testing.assert_array_equal(padded[:, :5, :7], chw)
    np.testing.assert_array_equal(padded[:, 5, :7], chw[:, 3])  # reflect, not edge
    same, size = images.pad_to_multiple(chw[:, :4, :4], 4)
    assert same.shape == (3, 4, 4) and size == (4, 4)
    batched, _ = images.pad_to_multiple(chw[None], 8)
    assert batched.shape == (1, 3, 8, 8)
    tiny, _ = images.pad_to_multiple(chw[:, :1, :2], 4)  # reflect impossible: edge
    assert tiny.shape == (3, 4, 4)


def test_make_grid_layout():
    a, b = _rgb(4, 3), _rgb(8, 6)[..., :1]
    grid = images.make_grid([a, b], gap=2)
    assert grid.shape == (8, 3 + 2 + 6, 3)
    np.testing.assert_array_equal(grid[:4, :3], a)
    assert np.all(grid[4:, :3] == 1.0) and np.all(grid[:, 3:5] == 1.0)
    np.testing.assert_array_equal(grid[:, 5:, 1], b[..., 0])


# --- damaged files are refused, never trained on ------------------------------------------------

def _photo(h=96, w=128, seed=0):
    """Smooth content (as real photos): JPEG's entropy data then has few 0xFF bytes."""
    img = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (9, 9), 3)


def _encode(ext, img, params=()):
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_jpeg_cut_in_half_is_refused(tmp_path):
    data = _encode(".jpg", _photo())
    # The failure this guards against: OpenCV decodes half a JPEG without an error.
    assert cv2.imdecode(np.frombuffer(data[:len(data) // 2], np.uint8), cv2.IMREAD_COLOR) \
        is not None
    path = _write(tmp_path, "half.jpg", data[:len(data) // 2])
    with pytest.raises(UserError, match=r"half\.jpg.*truncated.*FF D9"):
        images.read_image(path)
    # Cut anywhere: inside the headers, the scan, or just before the end-of-image marker.
    for cut in (3, 30, 400, len(data) - 2, len(data) - 1):
        with pytest.raises(images.CorruptImage, match="cut.jpg"):
            images.read_image(_write(tmp_path, "cut.jpg", data[:cut]))


def test_jpeg_with_an_embedded_thumbnail_still_needs_its_own_end(tmp_path):
    # An EXIF-style APP1 segment holding a whole JPEG (with its own FF D9): the walk skips it
    # by its length, so a truncated main image is still caught.
    thumb = _encode(".jpg", _photo(16, 16, seed=1))
    app1 = b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb
    data = _encode(".jpg", _photo())
    full = data[:2] + app1 + data[2:]
    assert images.read_image(_write(tmp_path, "ok.jpg", full)).shape == (96, 128, 3)
    cut = full[:len(app1) + (len(full) - len(app1)) // 2]
    with pytest.raises(images.CorruptImage, match="thumb.jpg"):
        images.read_image(_write(tmp_path, "thumb.jpg", cut))


def test_png_cut_in_half_is_refused(tmp_path):
    data = _encode(".png", _photo())
    path = _write(tmp_path, "half.png", data[:len(data) // 2])
    with pytest.raises(UserError, match=r"half\.png.*truncated"):
        images.read_image(path)
    no_iend = _write(tmp_path, "noend.png", data[:-12])
    with pytest.raises(UserError, match=r"noend\.png.*IEND"):
        images.read_image(no_iend)


def test_png_with_a_flipped_byte_in_idat_is_refused(tmp_path):
    data = bytearray(_encode(".png", _photo()))
    idat = data.index(b"IDAT")
    data[idat + 4 + 100] ^= 0x01
    with pytest.raises(UserError, match=r"flip\.png.*'IDAT'.*CRC"):
        images.read_image(_write(tmp_path, "flip.png", bytes(data)))


def test_header_size_must_match_the_decoded_image(tmp_path, monkeypatch):
    path = _write(tmp_path, "a.png", _encode(".png", _photo(8, 8)))
    monkeypatch.setattr(images, "check_image_bytes", lambda raw, p: (9, 8))
    with pytest.raises(UserError, match=r"a\.png decoded to 8x8 but its header says 9x8"):
        images.read_image(path)


@pytest.mark.parametrize("name, img, params", [
    ("rgb8.png", _photo(), ()),
    ("rgb16.png", _photo().astype(np.uint16) * 257, ()),
    ("gray8.png", _photo()[..., 0], ()),
    ("gray16.png", _photo()[..., 0].astype(np.uint16) * 257, ()),
    ("rgba.png", np.dstack([_photo(), np.full((96, 128), 200, np.uint8)]), ()),
    ("rgb.jpg", _photo(), ()),
    ("gray.jpg", _photo()[..., 0], ()),
    ("progressive.jpg", _photo(), (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
    ("restart.jpg", _photo(), (cv2.IMWRITE_JPEG_RST_INTERVAL, 2)),
    ("rgb.bmp", _photo(), ()),
])
def test_good_files_still_read(tmp_path, name, img, params):
    path = _write(tmp_path, name, _encode(os.path.splitext(name)[1], img, params))
    out = images.read_image(path)
    assert out.shape == (96, 128, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_trailing_padding_after_the_end_is_tolerated(tmp_path):
    jpg = _encode(".jpg", _photo()) + b"\x00" * 7
    assert images.read_image(_write(tmp_path, "pad.jpg", jpg)).shape == (96, 128, 3)
    png = _encode(".png", _photo()) + b"\x00" * 3
    assert images.read_image(_write(tmp_path, "pad.png", png)).shape == (96, 128, 3)


def test_truncated_bmp_is_refused(tmp_path):
    data = _encode(".bmp", _photo())
    with pytest.raises(UserError, match=r"b\.bmp.*BMP truncated"):
        images.read_image(_write(tmp_path, "b.bmp", data[:len(data) // 2]))


def test_check_cost_is_small_next_to_decoding():
    """The checks scan the bytes once; decoding does far more. 1024x1024 (measured on 2 shared
    cores: JPEG q95 0.09 ms check vs 7.7 ms decode, PNG 0.66 vs 21 ms, 16-bit PNG 1.1 vs 42 ms)."""
    import time

    big = cv2.resize(_photo(), (1024, 1024), interpolation=cv2.INTER_CUBIC)

    def best(fn, arg, n=5):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn(arg)
            times.append(time.perf_counter() - t)
        return min(times)

    for ext in (".jpg", ".png"):
        raw = np.frombuffer(_encode(ext, big), np.uint8)
        check = best(lambda r: images.check_image_bytes(r, "x"), raw)
        decode = best(lambda r: cv2.imdecode(r, cv2.IMREAD_UNCHANGED), raw)
        assert check < 0.25 * decode, (ext, check, decode)


def test_png_colour_profile_causes_no_libpng_warning(capfd):
    """scikit-image's astronaut.png carries an iCCP profile libpng calls incorrect: decoding it
    printed "libpng warning: iCCP: known incorrect sRGB profile" each time. read_image gives
    the same pixels, silently."""
    skimage = pytest.importorskip("skimage")
    from skimage import io as skio

    path = os.path.join(os.path.dirname(skimage.__file__), "data", "astronaut.png")
    assert b"iCCP" in open(path, "rb").read(4096)
    capfd.readouterr()
    img = images.read_image(path)
    assert "libpng warning" not in capfd.readouterr().err
    np.testing.assert_array_equal((img * 255.0 + 0.5).astype(np.uint8), skio.imread(path)[..., :3])
