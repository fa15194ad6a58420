"""Manifests: what a data task wrote, so a later run knows its own files from anyone else's.

Two tasks write into folders that may already hold data (a local folder or obs://, s3://):

* `--task synth` writes `SYNTHETIC.json` at the top of its output: the model and every file it
  wrote with its size. Synth refuses a destination holding anything else (a real data set, or
  another model's synthetic set), so it never overwrites or mixes with data it did not write,
  while re-running it into its own earlier output still works. The manifest goes up BEFORE the
  data, so an upload cut short leaves files the manifest already claims.
* `--task preprocess` keeps `PREPROCESSED.jsonl` beside the files it converts: one JSON line
  `{"file": rel, "size": n}` appended as each output is complete (the last line for a file
  wins; a torn last line is ignored), rewritten compactly at the end of a run. A re-run against
  a remote destination skips exactly the files whose listed size is the recorded one, without
  downloading them; anything else (truncated, foreign, unrecorded) is converted again.

Pure Python (json, obs_sync): no MindSpore."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, Iterable, List, Mapping, Optional

from src.errors import UserError

log = logging.getLogger(__name__)

SYNTH_MANIFEST = "SYNTHETIC.json"
SYNTH_FORMAT = "synthetic-data"
PREPROCESS_MANIFEST = "PREPROCESSED.jsonl"
PREPROCESS_FORMAT = "preprocessed-files"
VERSION = 1
_SHOWN = 3  # names quoted in an error line


def join_url(url: str, rel: str) -> str:
    """`rel` (a/b.png) under the folder `url` (a local path or obs://, s3:// URL)."""
    import obs_sync

    if obs_sync.is_remote(url):
        return url.rstrip("/") + "/" + rel
    return os.path.join(url, *rel.split("/"))


def _write_text(path: str, text: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fetch(url: str, name: str, local_dir: str, listing: Mapping, sync_options: Optional[dict]
          = None) -> Optional[str]:
    """The manifest `name` at the folder `url` as a local file in local_dir (downloaded when
    remote), or None when `listing` (the folder's files) has none."""
    import obs_sync

    if name not in listing:
        return None
    src = join_url(url, name)
    if not obs_sync.is_remote(url):
        return src
    dst = os.path.join(local_dir, name)
    obs_sync.sync(src, dst, incremental=False, **(sync_options or {}))
    return dst


def listed_sizes(url: str, listing: Mapping, wanted: Iterable[str]) -> Dict[str, Optional[int]]:
    """rel → size of the listed files, asking the storage for the sizes a listing lacks
    (moxing lists names only) where `wanted` names them: one request per such file."""
    import obs_sync

    sizes = {rel: getattr(entry, "size", entry) for rel, entry in listing.items()}
    missing = [rel for rel in wanted if rel in sizes and sizes[rel] is None]
    if missing and obs_sync.is_remote(url):
        backend = obs_sync.select_backend()
        try:
            folder = obs_sync.parse_location(url).as_dir()
            for rel in missing:
                sizes[rel] = int(backend.size(folder.join(rel)))
        finally:
            backend.close()
    return sizes


# --- synth -------------------------------------------------------------------------------------

def read_synth_manifest(path: Optional[str]) -> Optional[dict]:
    """The manifest's dict, or None when absent or not a synth manifest (a damaged one marks
    nothing as synthetic: its folder is then treated as foreign data)."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        log.warning("%s is unreadable: the files beside it count as foreign data", path)
        return None
    if not isinstance(data, dict) or data.get("format") != SYNTH_FORMAT \
            or not isinstance(data.get("files"), dict):
        return None
    return data


def foreign_files(listing: Iterable[str], previous: Optional[dict], model: str) -> List[str]:
    """Files of a destination that are not `model`'s own earlier synthetic output."""
    ours = set()
    if previous is not None and previous.get("model") == model:
        ours = set(previous["files"])
    return sorted(rel for rel in listing if rel != SYNTH_MANIFEST and rel not in ours)


def check_synth_destination(target: str, model: str, listing: Mapping,
                            previous: Optional[dict]) -> None:
    """Refuse (UserError) a destination holding files synth did not write for `model`."""
    foreign = foreign_files(listing, previous, model)
    if not foreign:
        return
    other = ""
    if previous is not None and previous.get("model") != model:
        other = " (synthetic data of model %r)" % previous.get("model")
    shown = ", ".join(foreign[:_SHOWN]) + (", ..." if len(foreign) > _SHOWN else "")
    raise UserError("--task=synth: destination %s holds %d file(s) synth did not write for model "
                    "%r%s, e.g. %s; synth never overwrites or mixes with other data: give it an "
                    "empty destination (--synth.output_url=<new folder>, or --data_url)"
                    % (target, len(foreign), model, other, shown))


def synth_manifest(model: str, files: Mapping[str, Optional[int]], summary: dict,
                   settings: dict) -> dict:
    return {"format": SYNTH_FORMAT, "version": VERSION, "model": model,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": {rel: files[rel] for rel in sorted(files)},
            "summary": summary, "synth": settings}


def write_synth_manifest(path: str, manifest: dict) -> str:
    _write_text(path, json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n")
    return path


# --- preprocess --------------------------------------------------------------------------------

class FileLog:
    """The preprocess manifest in a local folder: `record(rel, size)` appends a line as soon as
    an output is complete; `sizes` is what the file says (last line per file wins);
    `rewrite(sizes)` replaces it atomically with exactly those entries."""

    def __init__(self, folder: str, name: str = PREPROCESS_MANIFEST):
        self.path = os.path.join(folder, name)
        self.sizes: Dict[str, int] = self._read()

    def _read(self) -> Dict[str, int]:
        sizes: Dict[str, int] = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError:
            return sizes
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:  # a line torn by an interruption
                continue
            if isinstance(item, dict) and isinstance(item.get("file"), str) \
                    and isinstance(item.get("size"), int):
                sizes[item["file"]] = item["size"]
        return sizes

    @staticmethod
    def _header() -> str:
        return json.dumps({"format": PREPROCESS_FORMAT, "version": VERSION}) + "\n"

    @staticmethod
    def _line(rel: str, size: int) -> str:
        return json.dumps({"file": rel, "size": int(size)}, sort_keys=True) + "\n"

    def record(self, rel: str, size: int) -> None:
        new = not os.path.exists(self.path)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write((self._header() if new else "") + self._line(rel, size))
            f.flush()
        self.sizes[rel] = int(size)

    def rewrite(self, sizes: Mapping[str, int]) -> None:
        text = self._header() + "".join(self._line(rel, sizes[rel]) for rel in sorted(sizes))
        _write_text(self.path, text)
        self.sizes = dict(sizes)
