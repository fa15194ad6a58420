"""--task synth never touches data it did not write: a destination holding anything but this
model's own earlier synthetic output is refused before anything is written."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from src.data import manifest as mf
from src.errors import UserError
from tests.e2e_helpers import clean_env, start

SMALL = ["--synth.num_scenes=2", "--synth.hazy_per_scene=2", "--synth.num_val=1",
         "--synth.height=32", "--synth.width=32", "--synth.photos=false"]


def _digest(folder) -> dict:
    out = {}
    for root, _, files in os.walk(str(folder)):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, str(folder))] = hashlib.sha256(f.read()).hexdigest()
    return out


def _real_set(folder) -> None:
    """8 'real' images in the layout synth writes (same names: an overwrite would hit them)."""
    for i in (1, 2, 3, 4):
        for sub, name in (("hazy", "%d_1_0.9.png" % i), ("clear", "%d.png" % i)):
            path = folder / "train" / sub / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"real image %d %s" % (i, sub.encode()))


@pytest.fixture()
def env(tmp_path):
    return clean_env(str(tmp_path / "obs"))


def _synth(env, url, *extra, config="configs/aecrnet_demo.yaml"):
    return start(["--task=synth", "--config=" + config, "--data_url=" + url] + SMALL
                 + list(extra), env)


def _error_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.mark.parametrize("remote", [False, True])
def test_a_real_data_set_is_refused_and_left_untouched(env, tmp_path, remote):
    if remote:
        folder = tmp_path / "obs" / "bucket" / "real"
        url = "obs://bucket/real"
    else:
        folder = tmp_path / "real"
        url = str(folder)
    _real_set(folder)
    before = _digest(folder)
    res = _synth(env, url)
    assert res.returncode == 2, res.stderr
    line = _error_line(res)
    assert url in line and "holds 8 file(s)" in line and "train/clear/1.png" in line
    assert "--synth.output_url" in line and "empty destination" in line
    assert _digest(folder) == before, "synth touched data it did not write"


def test_rerun_into_its_own_output_works_and_keeps_the_manifest_exact(env, tmp_path):
    url = "obs://bucket/synth"
    folder = tmp_path / "obs" / "bucket" / "synth"
    res = _synth(env, url)
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((folder / mf.SYNTH_MANIFEST).read_text())
    assert manifest["model"] == "aecrnet" and manifest["format"] == mf.SYNTH_FORMAT
    files = {k: v for k, v in _digest(folder).items() if k != mf.SYNTH_MANIFEST}
    assert sorted(manifest["files"]) == sorted(files) and len(files) == 2 + 4 + 2
    assert all(manifest["files"][k] == (folder / k).stat().st_size for k in files)

    # An upload cut short: some files missing, the manifest (uploaded first) still there.
    os.remove(str(folder / "train" / "hazy" / sorted(os.listdir(folder / "train" / "hazy"))[0]))
    res = _synth(env, url)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(k for k in _digest(folder) if k != mf.SYNTH_MANIFEST) == sorted(files)

    # Anything added by someone else makes it foreign again, named.
    (folder / "train" / "clear" / "mine.png").write_bytes(b"a real photo")
    res = _synth(env, url)
    assert res.returncode == 2 and "holds 1 file(s)" in _error_line(res)
    assert "train/clear/mine.png" in _error_line(res)
    assert (folder / "train" / "clear" / "mine.png").read_bytes() == b"a real photo"


def test_another_models_synthetic_set_is_foreign(env, tmp_path):
    url = str(tmp_path / "set")
    assert _synth(env, url).returncode == 0
    res = start(["--task=synth", "--config=configs/singan_dehaze_demo.yaml", "--data_url=" + url,
                 "--synth.num_hazy=2", "--synth.num_clear=2", "--synth.num_test=1",
                 "--synth.height=32", "--synth.width=32", "--synth.photos=false"], env)
    assert res.returncode == 2
    assert "synthetic data of model 'aecrnet'" in _error_line(res)


@pytest.mark.parametrize("remote", [False, True])
def test_a_smaller_rerun_removes_its_own_stale_files(env, tmp_path, remote):
    url, folder = ("obs://b/set", tmp_path / "obs" / "b" / "set") if remote else (
        str(tmp_path / "set"), tmp_path / "set")
    assert _synth(env, url, "--synth.num_scenes=3").returncode == 0
    assert len(os.listdir(folder / "train" / "clear")) == 3
    res = _synth(env, url)  # 2 scenes: the two sets must not mix
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(os.listdir(folder / "train" / "clear")) == ["1.png", "2.png"]
    manifest = json.loads((folder / mf.SYNTH_MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted(
        k for k in _digest(folder) if k != mf.SYNTH_MANIFEST)


def test_foreign_files_rules():
    previous = {"format": mf.SYNTH_FORMAT, "model": "lsid", "files": {"a.dng": 10}}
    assert mf.foreign_files(["a.dng", mf.SYNTH_MANIFEST], previous, "lsid") == []
    assert mf.foreign_files(["a.dng", "b.txt"], previous, "lsid") == ["b.txt"]
    assert mf.foreign_files(["a.dng"], previous, "aecrnet") == ["a.dng"]
    assert mf.foreign_files(["a.dng"], None, "lsid") == ["a.dng"]
    with pytest.raises(UserError, match=r"dest holds 5 file\(s\).*e\.g\. 0, 1, 2, \.\.\."):
        mf.check_synth_destination("dest", "lsid", {str(i): 1 for i in range(5)}, None)


def test_a_damaged_manifest_marks_nothing_as_synthetic(tmp_path):
    path = tmp_path / mf.SYNTH_MANIFEST
    path.write_text('{"format": "synthetic-data", "files": {"a.png"')
    assert mf.read_synth_manifest(str(path)) is None
    path.write_text('{"format": "something else", "files": {}}')
    assert mf.read_synth_manifest(str(path)) is None
