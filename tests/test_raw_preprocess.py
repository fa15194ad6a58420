"""raw → HDF5 preprocessing: Bayer packing per CFA, exposure parsing, the converter on real DNG
files (skip on re-run, a truncated raw named and counted, atomic writes)."""
from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
import rawpy

from src.data import raw_preprocess as rp
from src.data.manifest import PREPROCESS_MANIFEST, FileLog
from src.data.synth_raw import synthesize_sid, write_dng
from src.errors import UserError


def _coded_mosaic(h=4, w=6):
    """raw[y, x] = 100·y + x: every value names its position."""
    y, x = np.mgrid[0:h, 0:w]
    return (100 * y + x).astype(np.uint16)


# --- packing -----------------------------------------------------------------------------------

def test_pack_rggb_is_the_authors_order():
    raw = _coded_mosaic()
    planes = rp.pack_bayer(raw, 0, 1, "RGGB", normalize=False)
    assert planes.shape == (4, 2, 3) and planes.dtype == np.uint16
    # R (0,0), G (0,1), B (1,1), G (1,0): train_Sony.py's pack_raw.
    np.testing.assert_array_equal(planes[0], [[0, 2, 4], [200, 202, 204]])
    np.testing.assert_array_equal(planes[1], [[1, 3, 5], [201, 203, 205]])
    np.testing.assert_array_equal(planes[2], [[101, 103, 105], [301, 303, 305]])
    np.testing.assert_array_equal(planes[3], [[100, 102, 104], [300, 302, 304]])


@pytest.mark.parametrize("cfa, expected", [
    # (R, G on R's row, B, G on B's row) as (dy, dx)
    ("BGGR", ((1, 1), (1, 0), (0, 0), (0, 1))),
    ("GRBG", ((0, 1), (0, 0), (1, 0), (1, 1))),
    ("GBRG", ((1, 0), (1, 1), (0, 1), (0, 0))),
])
def test_pack_other_patterns_by_role(cfa, expected):
    raw = _coded_mosaic()
    assert rp.bayer_offsets(cfa) == expected
    planes = rp.pack_bayer(raw, 0, 1, cfa, normalize=False)
    for k, (dy, dx) in enumerate(expected):
        np.testing.assert_array_equal(planes[k], raw[dy::2, dx::2])


def test_pack_reads_rawpy_style_pattern_and_per_channel_black():
    raw = np.array([[612, 1100, 612, 1100],
                    [2100, 3100, 2100, 3100]], dtype=np.uint16)
    # LibRaw's GRBG: colour indices into 'RGBG', the second green is 3.
    pattern = np.array([[1, 0], [2, 3]])
    black = [100, 500, 600, 700]  # per colour index R, G, B, G2
    out = rp.pack_bayer(raw, black, 1100, pattern, b"RGBG")
    # R at (0,1): (1100-100)/(1100-100) = 1; G(R row) at (0,0): (612-500)/600;
    # B at (1,0): (2100-600)/500 = 3 (not clipped here); G(B row) at (1,1): (3100-700)/400.
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 112 / 600, 3.0, 6.0], rtol=1e-6)
    dark = rp.pack_bayer(np.full((2, 2), 50, np.uint16), 512, 16383, "RGGB")
    assert dark.dtype == np.float32 and np.all(dark == 0.0)  # below black clips to 0


def test_non_bayer_layouts_are_refused():
    with pytest.raises(ValueError, match="not a Bayer"):
        rp.bayer_offsets("RRGB")
    with pytest.raises(ValueError, match="2x2"):
        rp.bayer_offsets(np.zeros((6, 6), int), "RGBG")


# --- exposure ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, seconds", [
    ("00001_00_0.04s.ARW", 0.04), ("./Sony/long/00001_00_10s.ARW", 10.0),
    ("00001_00_0.033s.dng", 0.033), ("20001_03_.1s.h5", 0.1), ("10003_00_30s.arw", 30.0),
    ("IMG_0001.dng", None), ("00001_00_0s.ARW", None),
])
def test_exposure_from_name(name, seconds):
    got = rp.exposure_from_name(name)
    assert got == pytest.approx(seconds) if seconds is not None else got is None


def test_exposure_from_exif_when_the_name_has_none(tmp_path):
    raw_dir = tmp_path / "raw" / "long"
    mosaic = np.full((32, 32), 1000, np.uint16)
    write_dng(str(raw_dir / "night_scene.dng"), mosaic, exposure_time=0.25)
    assert rp.exposure_from_exif(str(raw_dir / "night_scene.dng")) == pytest.approx(0.25)
    report = rp.preprocess_raws(str(tmp_path / "raw"), str(tmp_path / "out"), workers=0)
    assert report["converted"] == 1
    with h5py.File(tmp_path / "out" / "long" / "night_scene.h5", "r") as f:
        assert f.attrs["exposure_time"] == pytest.approx(0.25)
        assert f.attrs["exposure_source"] == "exif"


# --- the converter -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def raw_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("sid_raw")
    synthesize_sid(str(root), num_scenes=2, num_test_scenes=0, num_val_scenes=1, height=64,
                   width=96, short_exposures=(0.1, 0.04))
    return str(root)


def test_preprocess_converts_skips_and_matches_rawpy(raw_set, tmp_path):
    out = str(tmp_path / "h5")
    report = rp.preprocess_raws(raw_set, out, workers=2)
    raws = rp.find_raws(raw_set)
    assert len(raws) == 9 and report["converted"] == 9 and report["failed"] == []
    assert sorted(report["list_files"]) == ["Sony_test_list.txt", "Sony_train_list.txt",
                                            "Sony_val_list.txt"]
    assert report["peak_rss_mb"] is None or report["peak_rss_mb"] > 0

    short = "Sony/short/00001_00_0.04s"
    with rawpy.imread(os.path.join(raw_set, short + ".dng")) as r:
        expected = rp.pack_bayer(r.raw_image_visible, 0, 1, r.raw_colors_visible[:2, :2],
                                 r.color_desc, normalize=False)
    with h5py.File(os.path.join(out, short + ".h5"), "r") as f:
        np.testing.assert_array_equal(f["raw"][()], expected)
        assert "rgb" not in f  # short exposures carry no ground truth
        assert f.attrs["cfa"] == "RGGB" and f.attrs["exposure_time"] == pytest.approx(0.04)
        np.testing.assert_array_equal(f.attrs["black_level"], [512] * 4)
        assert f.attrs["white_level"] == 16383
    gt = "Sony/long/00001_00_10s"
    with rawpy.imread(os.path.join(raw_set, gt + ".dng")) as r:
        rendered = r.postprocess(use_camera_wb=True, half_size=False, no_auto_bright=True,
                                 output_bps=16)
    with h5py.File(os.path.join(out, gt + ".h5"), "r") as f:
        assert f["rgb"].dtype == np.uint16
        np.testing.assert_array_equal(f["rgb"][()], rendered.transpose(2, 0, 1))

    again = rp.preprocess_raws(raw_set, out, workers=2)
    assert again["converted"] == 0 and again["skipped"] == 9 and again["list_files"] == []
    assert again["redone"] == []
    # Outputs listed at a remote data_url are skipped without a local copy when their listed
    # size is the one the manifest recorded (the runner fetches the manifest into out_dir).
    log = FileLog(out)
    assert sorted(log.sizes) == sorted(rp.output_name(r) for r in raws)
    listed = {rel: os.path.getsize(os.path.join(out, rel)) for rel in log.sizes}
    assert log.sizes == listed
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(log.path, str(other))
    elsewhere = rp.preprocess_raws(raw_set, str(other), workers=0, done=listed)
    assert elsewhere["converted"] == 0 and elsewhere["skipped"] == 9
    assert FileLog(str(other)).sizes == listed  # the manifest still claims them all


def test_truncated_raw_is_named_and_the_rest_converts(raw_set, tmp_path, caplog):
    raw_dir = tmp_path / "raw"
    shutil.copytree(raw_set, raw_dir)
    bad = raw_dir / "Sony" / "short" / "00002_00_0.1s.dng"
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) // 2])
    out = tmp_path / "h5"
    report = rp.preprocess_raws(str(raw_dir), str(out), workers=0)
    name = "Sony/short/00002_00_0.1s.dng"
    assert report["failed"] == [name]
    assert report["converted"] == 8
    assert name in caplog.text and "cannot convert" in caplog.text
    assert not (out / "Sony" / "short" / "00002_00_0.1s.h5").exists()
    leftovers = [n for _, _, files in os.walk(out) for n in files if rp._TEMP_MARK in n]
    assert leftovers == []


def test_writes_are_atomic_and_stale_parts_are_cleaned(raw_set, tmp_path, monkeypatch):
    out = tmp_path / "h5"
    stale = out / "Sony" / "short" / (".00001_00_0.1s.h5%s4242" % rp._TEMP_MARK)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")
    calls = []

    def failing_dataset(f, name, data, side, comp):
        calls.append(name)
        f.create_dataset(name, data=data)
        raise OSError("disk full")  # the interruption happens after bytes hit the temp file

    monkeypatch.setattr(rp, "_dataset", failing_dataset)
    report = rp.preprocess_raws(raw_set, str(out), workers=0)
    assert calls and report["converted"] == 0 and len(report["failed"]) == 9
    assert "disk full" in report["errors"]["Sony/long/00001_00_10s.dng"]
    files = [n for _, _, names in os.walk(out) for n in names]
    assert not stale.exists()
    assert not [n for n in files if n.endswith(".h5") or rp._TEMP_MARK in n]


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        rp.preprocess_raws(str(tmp_path / "nope"), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no raw files"):
        rp.preprocess_raws(str(tmp_path / "empty"), str(tmp_path / "out"))
    with pytest.raises(UserError, match="compression"):
        rp.preprocess_raws(str(tmp_path / "empty"), str(tmp_path / "out"), compression="zstd")


def test_start_py_preprocess_against_mock_obs(tmp_path):
    """The job path: --task synth writes DNGs to a mock OBS bucket, --task preprocess writes the
    HDF5 set back to OBS, a second run converts nothing, a truncated raw is named and fails
    the job."""
    from tests.e2e_helpers import clean_env, start

    env = clean_env(str(tmp_path / "obs"), OMP_NUM_THREADS="1")
    common = ["--config=configs/lsid_demo.yaml", "--cache_dir=%s" % (tmp_path / "cache"),
              "--synth.num_scenes=2", "--synth.num_test_scenes=0", "--synth.num_val_scenes=1",
              "--synth.height=64", "--synth.width=96", "--preprocess.workers=2"]
    res = start(common + ["--task=synth"], env)
    assert res.returncode == 0, res.stderr[-2000:]
    bucket = tmp_path / "obs" / "demo" / "lsid"
    raws = sorted(p.relative_to(bucket / "raw") for p in (bucket / "raw").rglob("*.dng"))
    assert len(raws) == 12

    res = start(common + ["--task=preprocess"], env)
    assert res.returncode == 0, res.stderr[-2000:]
    h5 = sorted(p.relative_to(bucket / "hdf5") for p in (bucket / "hdf5").rglob("*.h5"))
    assert h5 == sorted(r.with_suffix(".h5") for r in raws)
    assert (bucket / "hdf5" / "Sony_train_list.txt").is_file()
    assert not [p for p in (bucket / "hdf5").rglob("*") if rp._TEMP_MARK in p.name]

    # A fresh machine (new cache): what is done is known from the OBS listing alone.
    fresh = [a for a in common if not a.startswith("--cache_dir")]
    res = start(fresh + ["--cache_dir=%s" % (tmp_path / "cache2"), "--task=preprocess"], env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "0 converted, 12 skipped, 0 failed" in res.stdout + res.stderr
    assert not list((tmp_path / "cache2").rglob("*.h5")), "the HDF5 set was downloaded again"

    assert (bucket / "hdf5" / PREPROCESS_MANIFEST).is_file()

    # An HDF5 file at data_url truncated (a copy cut short): re-run on a fresh machine, it is
    # rebuilt from the listing alone (its size is not the recorded one), and valid.
    victim = bucket / "hdf5" / "Sony" / "long" / "00001_00_10s.h5"
    good = victim.read_bytes()
    victim.write_bytes(good[:len(good) // 2])
    res = start(fresh + ["--cache_dir=%s" % (tmp_path / "cache3"), "--task=preprocess"], env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "1 converted, 11 skipped, 0 failed" in res.stdout + res.stderr
    assert rp.validate_h5(str(victim)) is None and victim.stat().st_size == len(good)

    bad = bucket / "raw" / "Sony" / "short" / "00002_00_0.04s.dng"
    bad.write_bytes(bad.read_bytes()[:1000])
    (bucket / "hdf5" / "Sony" / "short" / "00002_00_0.04s.h5").unlink()
    res = start(common + ["--task=preprocess"], env)
    assert res.returncode == 1
    assert "Sony/short/00002_00_0.04s.dng" in res.stderr + res.stdout


def test_listed_files_are_trusted_only_at_their_recorded_size(raw_set, tmp_path):
    out = tmp_path / "h5"
    rp.preprocess_raws(raw_set, str(out), workers=0)
    sizes = FileLog(str(out)).sizes
    remote = tmp_path / "remote_view"   # what the runner has for a remote data_url
    remote.mkdir()
    shutil.copy(str(out / PREPROCESS_MANIFEST), str(remote))
    truncated = "Sony/long/00001_00_10s.h5"
    listed = dict(sizes)
    listed[truncated] = sizes[truncated] // 2          # a truncated upload, as listed
    unrecorded = "Sony/short/00001_00_0.1s.h5"
    log = FileLog(str(remote))
    log.rewrite({k: v for k, v in sizes.items() if k != unrecorded})
    report = rp.preprocess_raws(raw_set, str(remote), workers=0, done=listed)
    assert report["redone"] == sorted([truncated, unrecorded])
    assert report["converted"] == 2 and report["skipped"] == 7
    assert rp.validate_h5(str(remote / truncated)) is None
    assert FileLog(str(remote)).sizes == sizes
    # Names without sizes (a listing from before manifests) are never trusted.
    bare = tmp_path / "bare"
    report = rp.preprocess_raws(raw_set, str(bare), workers=0, done=sorted(sizes))
    assert report["converted"] == 9 and report["skipped"] == 0


def test_a_truncated_local_output_is_rebuilt_on_rerun(raw_set, tmp_path, caplog):
    out = tmp_path / "h5"
    rp.preprocess_raws(raw_set, str(out), workers=0)
    victim = out / "Sony" / "long" / "00001_00_10s.h5"
    good_size = victim.stat().st_size
    data = victim.read_bytes()
    victim.write_bytes(data[:len(data) // 2])
    assert "truncated" in rp.validate_h5(str(victim))
    report = rp.preprocess_raws(raw_set, str(out), workers=0)
    assert report["converted"] == 1 and report["skipped"] == 8
    assert report["redone"] == ["Sony/long/00001_00_10s.h5"]
    assert "Sony/long/00001_00_10s.h5 (" in caplog.text and "truncated" in caplog.text
    assert rp.validate_h5(str(victim)) is None and victim.stat().st_size == good_size
    assert FileLog(str(out)).sizes["Sony/long/00001_00_10s.h5"] == good_size


def test_validate_h5_finds_what_is_missing(raw_set, tmp_path):
    out = tmp_path / "h5"
    rp.preprocess_raws(raw_set, str(out), workers=0)
    gt = out / "Sony" / "long" / "00001_00_10s.h5"
    short = out / "Sony" / "short" / "00001_00_0.1s.h5"
    assert rp.validate_h5(str(gt)) is None and rp.validate_h5(str(short)) is None
    with h5py.File(str(short), "a") as f:
        del f.attrs["black_level"]
    assert rp.validate_h5(str(short)) == "attribute black_level missing"
    with h5py.File(str(gt), "a") as f:
        del f["rgb"]
    assert "no dataset rgb" in rp.validate_h5(str(gt))
    other = tmp_path / "x.h5"
    other.write_bytes(b"not hdf5 at all")
    assert rp.validate_h5(str(other)) == "not an HDF5 file"
    assert "unreadable" in rp.validate_h5(str(tmp_path / "missing.h5"))
    assert not rp.is_complete(str(other))


def test_manifest_survives_a_torn_line(tmp_path):
    log = FileLog(str(tmp_path))
    log.record("a.h5", 10)
    log.record("b.h5", 20)
    log.record("a.h5", 11)
    with open(log.path, "a") as f:
        f.write('{"file": "c.h5", "si')  # interrupted mid-line
    assert FileLog(str(tmp_path)).sizes == {"a.h5": 11, "b.h5": 20}
    log.rewrite({"b.h5": 20})
    assert FileLog(str(tmp_path)).sizes == {"b.h5": 20}
