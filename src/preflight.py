"""Checks before money is spent: what a job reads exists, without downloading it.

`run_checks(cfg, task)` returns one `Check(name, ok, message)` per thing it looked at:

* `config` — a config fetched from a URL or found inside data_url says where it came from;
* `values` — every value check that needs no data (`src.checks.check_values`); when some
  fail, one failed check per bad key instead, named by the key;
* `data_url` — ONE listing of data_url (names and sizes, nothing downloaded);
* `data.train`, `data.val`, ... — each data set the recipe says the task reads
  (`Recipe.reads`) runs its own discovery on that listing (`check_listing`: the folders, the
  layout, pairable names, list files), so a wrong validation set fails now rather than at the
  first evaluation thousands of steps in;
* each file key the task reads (`net_weights`, `loss.vgg_weights`, `train.resume`,
  `eval.checkpoint`) and every other obs:// / s3:// URL the config names: one stat each.

`--task=plan` puts the list in its JSON and exits non-zero when one failed; train and eval run
the same checks before staging (`raise_failures`: one `error:` line per failure, naming the
key or URL).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, NamedTuple, Optional

import obs_sync
from src.config import get_path
from src.engine.runner import LOCATION_KEYS  # URLs of places, not files to stat
from src.errors import UserError

log = logging.getLogger(__name__)

# Checkpoint keys that only some tasks read, and their values that name no file.
TASK_FILE_KEYS = ("train.resume", "eval.checkpoint")
NOT_A_FILE = ("", "auto", "none")


class Check(NamedTuple):
    name: str      # the config key (or data_url, config, values) the check is about
    ok: bool
    message: str   # what was found, or what is wrong and how to fix it

    def line(self) -> str:
        """`name: message`, or the message alone when it starts with the name already."""
        if self.message.startswith(self.name + "="):
            return self.message
        return "%s: %s" % (self.name, self.message)


class ChecksFailed(UserError):
    """One or more checks failed: `lines` holds one line per failure."""

    def __init__(self, failed: List[Check]):
        self.lines = [c.line() for c in failed]
        super().__init__("; ".join(self.lines))


def raise_failures(checks: List[Check]) -> None:
    failed = [c for c in checks if not c.ok]
    if failed:
        raise ChecksFailed(failed)


def run_checks(cfg: dict, task: str, *, config_source=None, values: bool = True,
               retries: Optional[int] = None) -> List[Check]:
    """The checks `task` needs (see the module docstring); `values=False` skips check_values
    (start.py ran it already). Storage errors become failed checks, never exceptions."""
    from src.recipes.base import get_recipe

    retries = int((cfg.get("sync") or {}).get("retries", 3)) if retries is None else retries
    checks: List[Check] = []
    if config_source is not None and config_source.found_in:
        checks.append(Check("config", True, config_source.found_in))
    if values:
        checks.extend(_values(cfg, task))
    recipe_cls = get_recipe(str(cfg["model"]))
    reads = recipe_cls.reads(cfg, task)
    data_keys = [k for k in reads if isinstance(get_path(cfg, k, None), dict)]
    file_keys = [k for k in reads if k not in data_keys]

    listing = None
    wants_listing = bool(data_keys) or (recipe_cls.WEIGHTS_IN_DATA_URL and any(
        _relative_file(get_path(cfg, k, "")) for k in recipe_cls.WEIGHT_KEYS))
    if wants_listing:
        check, listing = _data_url(cfg, retries)
        checks.append(check)
    for key in data_keys if listing is not None else ():  # else data_url's line says why
        checks.append(_data_set(cfg, key, listing))
    in_data_url = recipe_cls.WEIGHT_KEYS if recipe_cls.WEIGHTS_IN_DATA_URL else ()
    checked = set()
    for key in file_keys:
        value = get_path(cfg, key, "")
        if isinstance(value, str) and value.strip().lower() not in NOT_A_FILE:
            checks.append(_file(key, value, listing if key in in_data_url else None, retries))
            checked.add(key)
    for key, url in _urls(cfg):
        skip = key in checked or (key in TASK_FILE_KEYS and key not in file_keys)
        if not skip:
            checks.append(_file(key, url, None, retries))
    return checks


def _values(cfg: dict, task: str) -> List[Check]:
    """check_values' verdict: one failed check per bad key (`key=value (must be ...)`)."""
    from src.checks import check_values

    try:
        check_values(cfg, task)
    except UserError as err:
        problems = getattr(err, "problems", None)
        if not problems:
            return [Check("values", False, str(err))]
        return [Check(p.split("=", 1)[0], False, "%s; fix it in the config file or with --%s=..."
                      % (p, p.split("=", 1)[0])) for p in problems]
    return [Check("values", True, "every value is in range")]


def _data_url(cfg: dict, retries: int):
    """(Check, Listing or None) from one listing of data_url."""
    from src.data.listing import Listing

    url = str(cfg.get("data_url") or "")
    if not url:
        return Check("data_url", False, "data_url is empty: set --data_url to the folder "
                     "holding the data set (obs://bucket/path or a local folder)"), None
    try:
        files = obs_sync.list_files(url, retries=retries)
    except UserError as err:
        return Check("data_url", False, str(err)), None  # it names the URL and the endpoint
    if not files:
        return Check("data_url", False, "%s does not exist or holds no files: upload the "
                     "data set there or fix --data_url" % url), None
    listing = Listing(url if obs_sync.is_remote(url) else os.path.abspath(url), files)
    return Check("data_url", True, "%s: %d files listed" % (url, len(files))), listing


def _data_set(cfg: dict, key: str, listing) -> Check:
    import src.data.paired  # noqa: F401  (the imports register the data sets)
    import src.data.sid  # noqa: F401
    import src.data.unpaired  # noqa: F401
    from src.registry import DATASETS

    spec = dict(get_path(cfg, key))
    kind = spec.pop("type")
    cls = DATASETS.get(kind)
    check = getattr(cls, "check_listing", None)
    if check is None:
        return Check(key, True, "%s: no check by name; read once staged" % kind)
    try:
        return Check(key, True, "%s: %s" % (kind, check(listing, **spec)))
    except UserError as err:
        return Check(key, False, str(err))


def _relative_file(value: Any) -> bool:
    return (isinstance(value, str) and value.strip().lower() not in NOT_A_FILE
            and not obs_sync.is_remote(value) and not os.path.isabs(value)
            and not os.path.exists(value))


def _file(key: str, value: str, listing, retries: int) -> Check:
    """A file the config names: a URL (one stat), a local path, or a path inside data_url
    (looked up in its listing)."""
    fix = "upload it or fix --%s" % key
    if obs_sync.is_remote(value):
        try:
            found = obs_sync.exists(value, retries=retries)
        except UserError as err:
            return Check(key, False, str(err))
        return Check(key, found, "%s exists" % value if found
                     else "%s does not exist: %s" % (value, fix))
    if os.path.exists(value):
        return Check(key, True, "%s exists" % os.path.abspath(value))
    if listing is not None and not os.path.isabs(value) and listing.isfile(value):
        return Check(key, True, "%s found in data_url %s" % (value, listing.root))
    return Check(key, False, "%s=%s: file not found (give a local path%s, or an obs:// URL)"
                 % (key, value, ", a path inside data_url" if listing is not None else ""))


def _urls(cfg: dict, prefix: str = ""):
    """(dotted key, URL) of every obs:// / s3:// file value in the config."""
    for key, value in cfg.items():
        if isinstance(value, dict):
            yield from _urls(value, prefix + key + ".")
        elif (isinstance(value, str) and key not in LOCATION_KEYS
              and obs_sync.is_remote(value)):
            yield prefix + key, value


def as_json(checks: List[Check]) -> List[Dict[str, Any]]:
    return [c._asdict() for c in checks]
