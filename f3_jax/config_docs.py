"""The meaning of every config field, read from the comments of the defaults functions.

A defaults function documents a field where it sets it, with a trailing comment or comment
lines right above it:

    c.train.steps = 400_000  # optimizer steps of the whole run
    # An unreadable newest checkpoint: warn and resume from the previous one (False: stop).
    c.train.restore_fallback = True

`field_docs(sources)` collects them, so the documentation lives in one place: beside the
default value. `describe(config, docs)` prints a resolved config with each field's value and
meaning (`python -m f3_jax.train --config X --print_config`).
"""

from __future__ import annotations

import inspect
import json
import re
import textwrap
from collections.abc import Callable, Sequence

_ASSIGN = re.compile(r"^\s*[A-Za-z_]\w*\.([\w.]+)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")
_COMMENT = re.compile(r"^\s*#\s?(.*)$")


def field_docs(sources: Sequence[tuple[Callable, str]]) -> dict[str, str]:
    """{"train.steps": "meaning"} from (defaults function, group prefix) pairs, in order: a
    later function's comment on a field replaces an earlier one's."""
    docs: dict[str, str] = {}
    for fn, prefix in sources:
        pending: list[str] = []
        for line in inspect.getsource(fn).splitlines():
            comment = _COMMENT.match(line)
            if comment:
                pending.append(comment.group(1).strip())
                continue
            assign = _ASSIGN.match(line)
            if assign is None:
                pending = []
                continue
            name = f"{prefix}.{assign.group(1)}" if prefix else assign.group(1)
            text = " ".join(pending + ([assign.group(3).strip()] if assign.group(3) else []))
            if text and not _is_group_call(assign.group(2)):
                docs[name] = text
            pending = []
    return docs


def _is_group_call(value: str) -> bool:
    """`c.data = data_defaults()`: a group, documented field by field elsewhere."""
    return value.endswith("_defaults()") or value.endswith("ConfigDict()")


def _leaves(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def describe(config, docs: dict[str, str], width: int = 100) -> str:
    """Every field of `config` as `name = value`, its meaning wrapped below it, by group."""
    lines, group = [], None
    for name, value in _leaves(json.loads(config.to_json_best_effort())):
        head = name.split(".")[0] if "." in name else ""
        if head != group:
            group = head
            lines.append(f"\n[{head}]" if head else "")
        lines.append(f"{name} = {value!r}")
        doc = docs.get(name)
        if doc:
            lines += textwrap.wrap(doc, width - 4, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines).strip("\n")
