"""Errors a user can cause and fix: printed as one line by start.py, exit status 2."""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """Bad input: a config key, a file, a URL or an environment variable. The message names it
    and says what would fix it."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' if nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return " (did you mean '%s'?)" % close[0] if close else ""
