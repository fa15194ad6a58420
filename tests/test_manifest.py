"""src/data/manifest.py helpers that talk to storage."""
from __future__ import annotations

import obs_sync
from src.data import manifest as mf


def test_listed_sizes_asks_for_the_sizes_a_listing_lacks(monkeypatch):
    asked = []

    class NamesOnly:  # moxing lists names without sizes
        def size(self, loc):
            asked.append(loc.url)
            return 42

        def close(self):
            asked.append("closed")

    monkeypatch.setattr(obs_sync, "select_backend", lambda backend=None: NamesOnly())
    listing = {"a.h5": obs_sync.Entry(None, None), "b.h5": obs_sync.Entry(None, None),
               "c.h5": obs_sync.Entry(7, None)}
    sizes = mf.listed_sizes("obs://bucket/set", listing, ["a.h5", "c.h5", "gone.h5"])
    assert sizes == {"a.h5": 42, "b.h5": None, "c.h5": 7}
    assert asked == ["obs://bucket/set/a.h5", "closed"]  # only what the manifest records


def test_fetch_downloads_a_remote_manifest(mock_obs, tmp_path):
    folder = mock_obs / "bucket" / "set"
    folder.mkdir(parents=True)
    (folder / mf.SYNTH_MANIFEST).write_text("{}")
    listing = obs_sync.list_files("obs://bucket/set")
    local = mf.fetch("obs://bucket/set", mf.SYNTH_MANIFEST, str(tmp_path / "x"), listing)
    assert local == str(tmp_path / "x" / mf.SYNTH_MANIFEST) and open(local).read() == "{}"
    assert mf.fetch("obs://bucket/set", mf.PREPROCESS_MANIFEST, str(tmp_path), listing) is None
    assert mf.join_url("obs://bucket/set/", "a/b.png") == "obs://bucket/set/a/b.png"
