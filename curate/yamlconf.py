"""Load YAML into closed pydantic models; validation errors say "file:line → what".

Used for run configs, rule packs and schema layouts, so every file a user writes is
checked the same way: unknown keys are rejected, and each error names the file, the line
and the field path that is wrong.
"""
from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from curate.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at path ``loc`` (deepest node that exists)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == part:
                    nxt = v
                    line = k.start_mark.line + 1
                    break
            if nxt is None:
                continue  # a tag pydantic adds for unions (e.g. 'caption_words'): skip it
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            # pydantic adds tags for unions (e.g. 'caption_regex'): skip them
            continue
    return line


def load_yaml(path: str | Path) -> tuple[Any, yaml.Node | None]:
    """Parse ``path``; return (data, node tree). Raises ConfigError on syntax errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    return data, node


def validate(model: type[M], data: Any, path: str | Path, node: yaml.Node | None = None) -> M:
    """Validate ``data`` against ``model``; raise ConfigError listing "file:line: field → message"."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(err["loc"])
            line = line_of(node, loc)
            field = ".".join(str(p) for p in loc) or "(top level)"
            where = f"{path}:{line}" if line else str(path)
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (not allowed here)" + _key_fix(model, loc)
            lines.append(f"{where}: {field} → {msg}")
        raise ConfigError("invalid file:\n  " + "\n  ".join(lines)) from None


def _fields_at(model: Any, loc: tuple[Any, ...]) -> dict | None:
    """The pydantic fields of the model that holds the key at ``loc`` (best effort: follows
    fields, list items, and the discriminator tags pydantic puts in ``loc`` for unions)."""
    def models_in(tp):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return [tp]
        return [m for a in typing.get_args(tp) for m in models_in(a)]

    cands = [model]
    for part in loc[:-1]:
        nxt = []
        for m in cands:
            if isinstance(part, str) and part in m.model_fields:
                nxt += models_in(m.model_fields[part].annotation)
            elif isinstance(part, int) or not isinstance(m, type):
                nxt.append(m)
            else:  # a union tag, e.g. 'caption_words': keep the member whose kind is that tag
                kind = m.model_fields.get("kind")
                if kind is not None and part in typing.get_args(kind.annotation):
                    nxt.append(m)
        cands = nxt or cands
        if len(cands) > 1 and isinstance(part, str):
            tagged = [m for m in cands if "kind" in m.model_fields and part in typing.get_args(m.model_fields["kind"].annotation)]
            cands = tagged or cands
    if len(cands) == 1:
        return cands[0].model_fields
    # several candidates (e.g. a list of a union before its tag): keys shared by all
    common = set.intersection(*(set(m.model_fields) for m in cands)) if cands else set()
    return {k: None for k in sorted(common)} or None


def _key_fix(model: Any, loc: tuple[Any, ...]) -> str:
    """'; did you mean X? allowed: a, b, c' for an unknown key."""
    try:
        fields = _fields_at(model, loc)
    except Exception:  # noqa: BLE001 - a hint must never hide the error itself
        return ""
    if not fields:
        return ""
    allowed = sorted(k for k in fields if k != "base")
    near = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
    return (f"; did you mean {near[0]!r}?" if near else "") + f"; allowed here: {', '.join(allowed)}"


def load_model(model: type[M], path: str | Path) -> M:
    """Parse and validate a YAML file into ``model`` (see :func:`validate`)."""
    data, node = load_yaml(path)
    return validate(model, data, path, node)
