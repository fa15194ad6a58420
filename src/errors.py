"""Errors a user can cause and fix: printed as one line by start.py, exit status 2."""
from __future__ import annotations

import difflib
import errno
import os
import shutil
from typing import Iterable, Optional


class UserError(Exception):
    """Bad input: a config key, a file, a URL or an environment variable. The message names it
    and says what would fix it."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' if nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return " (did you mean '%s'?)" % close[0] if close else ""


def disk_error(err: OSError, folder: str, needed: Optional[int] = None) -> Optional[UserError]:
    """A one-line UserError for a full or read-only disk, naming the folder, the space needed
    (when known) and free; None for any other OSError."""
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return UserError("cannot write to %s (%s): set --cache_dir (or --output_dir) to a "
                         "writable folder" % (folder, os.strerror(err.errno)))
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    probe = folder
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    try:
        free: Optional[int] = shutil.disk_usage(probe or os.sep).free
    except OSError:
        free = None
    return UserError("no space left in %s (%s needed, %s free): free space there or set "
                     "--cache_dir to a larger disk" % (
                         folder, "%.1f MB" % (needed / 1e6) if needed else "unknown",
                         "%.1f MB" % (free / 1e6) if free is not None else "unknown"))


def reraise_disk_error(err: OSError, folder: str, needed: Optional[int] = None) -> None:
    """Inside ``except OSError as err``: raise the one-line disk error, or ``err`` itself."""
    user = disk_error(err, folder, needed)
    if user is None:
        raise err
    raise user from err
