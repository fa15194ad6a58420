"""Where the config file comes from: a local path, an obs:// / s3:// URL, or a path inside data_url.

ModelArts' form passes `--config` as text, so a config kept next to the data set on OBS is
named by its URL (`--config=obs://bucket/configs/its.yaml`) or by its path inside data_url
(`--config=configs/its.yaml --data_url=obs://bucket/RESIDE/`). A remote config is fetched
through obs_sync into a private folder that also shows the repository's configs/ (so
`base: _base_/aecrnet.yaml` or `base: aecrnet_its.yaml` resolve as they do locally); a base
that is neither there nor in the repository is fetched from beside the remote file.

`locate_config(config, data_url, code_dir)` returns a `ConfigSource`: the local file to load
and, for a fetched one, where it came from (plan names it).
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from typing import List, Optional

import obs_sync
from src.errors import UserError

log = logging.getLogger(__name__)

_BASE_KEY = "base"


class ConfigSource:
    """`path`: the local file to load; `origin`: where it was fetched from (a URL, or a path
    inside a local data_url; '' when `path` is the file given); `found_in`: how it was found,
    for plan's checks."""

    def __init__(self, path: str, origin: str = "", found_in: str = ""):
        self.path = path
        self.origin = origin
        self.found_in = found_in

    @property
    def name(self) -> str:
        return self.origin or self.path


def locate_config(config: str, data_url: str, code_dir: str,
                  default: str) -> ConfigSource:
    """The config file `--config` names (see the module docstring). `data_url`: the command
    line's data_url ('' when none was given), searched last for a relative path."""
    if not config:
        return ConfigSource(os.path.join(code_dir, default))
    if obs_sync.is_remote(config):
        return ConfigSource(fetch_config(config), config, "fetched from %s" % config)
    if os.path.isabs(config) or os.path.exists(config):
        return ConfigSource(config)
    in_code = os.path.join(code_dir, config)  # relative to the code directory, as on ModelArts
    if os.path.exists(in_code):
        return ConfigSource(in_code)
    looked = [os.path.abspath(config), in_code]
    if data_url:
        inside = _join(data_url, config)
        if obs_sync.exists(inside):  # fetched like a URL, so shipped bases resolve here too
            return ConfigSource(fetch_config(inside), inside,
                                "fetched from data_url: %s" % inside)
        looked.append(inside)
    raise UserError("config file %s not found (looked for %s): give a path in the code "
                    "directory, an obs:// URL, or a path inside --data_url"
                    % (config, ", ".join(looked)))


def _join(folder: str, rel: str) -> str:
    rel = rel[2:] if rel.startswith("./") else rel
    if obs_sync.is_remote(folder):
        return folder.rstrip("/") + "/" + rel.lstrip("/")
    return os.path.join(folder, rel)


def fetch_config(url: str, retries: int = 3) -> str:
    """Fetch the config at `url` (and bases beside it that the repository lacks) into a
    private folder removed at exit; the local path of the fetched file."""
    if not obs_sync.exists(url, retries=retries):
        raise UserError("config %s does not exist: upload it there or fix --config" % url)
    folder = tempfile.mkdtemp(prefix="config-")
    atexit.register(shutil.rmtree, folder, True)
    shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")
    for entry in os.listdir(shipped):  # `base:` entries naming shipped files resolve as usual
        os.symlink(os.path.join(shipped, entry), os.path.join(folder, entry))
    return _fetch_with_bases(url, folder, os.path.basename(url.rstrip("/")), retries, [])


def _fetch_with_bases(url: str, folder: str, rel: str, retries: int, seen: List[str]) -> str:
    local = os.path.join(folder, *rel.split("/"))
    if os.path.islink(local):
        os.unlink(local)  # a fetched file wins over a shipped one of the same name
    obs_sync.sync(url, local, incremental=False, threads=1, retries=retries)
    log.info("config %s fetched", url)
    seen.append(url)
    for base in _bases(local):
        base_local = os.path.normpath(os.path.join(os.path.dirname(local), base))
        if os.path.exists(base_local) or not base_local.startswith(folder + os.sep):
            continue  # shipped (or outside: load_config names it when it is missing)
        base_url = _join(url.rsplit("/", 1)[0], os.path.relpath(
            base_local, os.path.dirname(local)).replace(os.sep, "/"))
        if base_url in seen or not obs_sync.exists(base_url, retries=retries):
            continue  # load_config reports the missing base (or the cycle) by name
        _fetch_with_bases(base_url, folder, os.path.relpath(base_local, folder)
                          .replace(os.sep, "/"), retries, seen)
    return local


def _bases(path: str) -> List[str]:
    from src.config import read_yaml

    bases: Optional[object] = read_yaml(path).get(_BASE_KEY)
    if isinstance(bases, str):
        return [bases]
    return [b for b in bases if isinstance(b, str)] if isinstance(bases, list) else []
