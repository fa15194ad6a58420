"""Folders as the data sets see them: the local disk, or one listing of data_url.

The data sets find their files through three calls (`isdir`, `isfile`, `listdir`). `LOCAL`
answers them from the disk; a `Listing` answers them from the relative paths of one
`obs_sync.list_files(data_url)`, so `--task=plan` (and train, before staging) can run a data
set's own discovery — folder names, layouts, pairable file names — on a remote data_url
without downloading it. Paths given to a Listing start with its root (the data_url itself), so
the messages the discovery raises name the URL the user must fix.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Set


class LocalFiles:
    """The local disk."""

    isdir = staticmethod(os.path.isdir)
    isfile = staticmethod(os.path.isfile)
    listdir = staticmethod(os.listdir)


LOCAL = LocalFiles()


class Listing:
    """`root` (a URL or folder) holding the files `rels` (paths relative to it, '/'-separated)."""

    def __init__(self, root: str, rels: Iterable[str]):
        self.root = root.rstrip("/") if "://" in root else root.rstrip(os.sep)
        self.files: Set[str] = set()
        self.children: Dict[str, Set[str]] = {"": set()}
        for rel in rels:
            rel = rel.strip("/")
            if not rel:
                continue
            self.files.add(rel)
            parts = rel.split("/")
            for depth in range(len(parts)):
                parent = "/".join(parts[:depth])
                self.children.setdefault(parent, set()).add(parts[depth])
                if depth + 1 < len(parts):
                    self.children.setdefault("/".join(parts[:depth + 1]), set())

    def __len__(self) -> int:
        return len(self.files)

    def rel(self, path: str) -> str:
        """`path` (root-prefixed, or already relative) relative to the root."""
        path = str(path)
        if path == self.root:
            return ""
        for sep in ("/", os.sep):
            if path.startswith(self.root + sep):
                path = path[len(self.root) + 1:]
                break
        return "/".join(p for p in path.replace(os.sep, "/").split("/") if p and p != ".")

    def isdir(self, path: str) -> bool:
        return self.rel(path) in self.children

    def isfile(self, path: str) -> bool:
        return self.rel(path) in self.files

    def listdir(self, path: str) -> List[str]:
        rel = self.rel(path)
        if rel not in self.children:
            raise FileNotFoundError(path)
        return sorted(self.children[rel])
