"""Name → class registries: everything configurable is built from `{type: Name, **kwargs}`."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict

from src.errors import UserError, did_you_mean


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Callable[..., Any]] = {}

    def register(self, obj=None, *, name=None):
        """Decorator: `@NETS.register` or `@NETS.register(name="Other")`."""
        def add(o):
            key = name or o.__name__
            if key in self._items and self._items[key] is not o:
                raise ValueError("%s %r registered twice" % (self.kind, key))
            self._items[key] = o
            return o
        return add(obj) if obj is not None else add

    def names(self):
        return sorted(self._items)

    def get(self, name: str):
        if name not in self._items:
            raise UserError("unknown %s type %r%s; known: %s" % (
                self.kind, name, did_you_mean(name, self._items), ", ".join(self.names())))
        return self._items[name]

    def validate(self, spec: dict, where: str = "", extra=()) -> None:
        """Check a `{type: ..., **kwargs}` spec against the constructor signature without
        building it. `extra` names keyword arguments the caller passes itself."""
        where = where or self.kind
        if not isinstance(spec, dict) or "type" not in spec:
            raise UserError("%s: expected a mapping with a 'type' key, got %r" % (where, spec))
        target = self.get(spec["type"])
        params = inspect.signature(target).parameters
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return
        accepted = [n for n, p in params.items()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for key in spec:
            if key != "type" and key not in accepted:
                raise UserError("%s: %s %r has no option %r%s; options: %s" % (
                    where, self.kind, spec["type"], key, did_you_mean(key, accepted),
                    ", ".join(a for a in accepted if a not in extra) or "none"))

    def build(self, spec: dict, where: str = "", **extra):
        self.validate(spec, where, extra=extra)
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        kwargs.update(extra)
        return self.get(spec["type"])(**kwargs)


NETS = Registry("net")
LOSSES = Registry("loss")
DATASETS = Registry("dataset")
