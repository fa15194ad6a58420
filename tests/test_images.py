from __future__ import annotations

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
