"""Griffe extension: the docstrings' Sphinx roles (``:class:`~lit_metric.PairMiner```) as mkdocstrings links.

A role whose target is a lit_metric object that the reference shows (public and with a docstring), named in full or
relative to the docstring's class or module, becomes a cross-reference; a role naming a lit_metric object in full
that does not exist stays one, so the strict build fails on it. A role naming another library, or an object that
the reference does not show, becomes inline code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):`(~?)\.?([\w.]+)`")


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name == "lit_metric":
            self._convert(pkg)

    def _convert(self, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(lambda match: _link(obj, *match.groups()), obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._convert(member)


def _link(obj: griffe.Object, short: str, name: str) -> str:
    text = f"`{name.rsplit('.', 1)[-1] if short else name}`"
    target = _resolve(obj, name)
    if target is None:
        # A name from outside lit_metric, or one that moved: only lit_metric's must resolve.
        return f"[{text}][{name}]" if name.startswith("lit_metric.") else text
    return f"[{text}][{target.path}]" if _shown(target) else text


def _shown(obj: griffe.Object) -> bool:
    """Whether the reference renders ``obj``: it and its parents up to the module are public and documented."""
    while not obj.is_module:
        if obj.name.startswith("_") or obj.docstring is None:
            return False
        obj = obj.parent
    return not any(part.startswith("_") for part in obj.path.split("."))


def _resolve(obj: griffe.Object, name: str) -> griffe.Object | None:
    """The object ``name`` names, seen from ``obj``: in full, or a member of ``obj`` or of an enclosing scope."""
    scopes = [obj.package] if name.startswith("lit_metric.") else []
    scope: griffe.Object | None = obj
    while scope is not None:
        scopes.append(scope)
        scope = scope.parent
    for scope in scopes:
        parts = name.split(".")[1:] if name.startswith("lit_metric.") and scope is obj.package else name.split(".")
        try:
            found = scope
            for part in parts:
                found = found.members[part]
            return found.final_target if found.is_alias else found
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
    return None
