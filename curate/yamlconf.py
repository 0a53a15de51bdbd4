"""Load YAML into closed pydantic models; validation errors say "file:line → what".

Used for run configs, rule packs and schema layouts, so every file a user writes is
checked the same way: unknown keys are rejected, and each error names the file, the line
and the field path that is wrong.
"""
from __future__ import annotations

import difflib
import re
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


def read_text(path: str | Path) -> str:
    """The text of a file the user writes (config, rule pack, claim file, opt-out or URL list):
    UTF-8, a leading byte-order mark dropped. No fallback encoding: a Latin-1 list read as
    something else would silently match other domains.

    Raises:
        ConfigError: the file cannot be read, or is not UTF-8 — naming the file, the line and
            column, and the byte offset of the first byte that is not UTF-8, and how to fix it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} (line {line}, "
            f"column {col}); save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None


def near_files(p: Path) -> str:
    """'; did you mean X?' naming the files beside ``p`` whose names are closest to its own
    (empty when none is close or its folder does not exist)."""
    try:
        names = [q.name for q in p.parent.iterdir()]
    except OSError:
        return f" (folder {p.parent} does not exist)" if not p.parent.exists() else ""
    near = difflib.get_close_matches(p.name, names, n=3, cutoff=0.75)
    return f"; did you mean {' or '.join(repr(str(p.parent / n)) for n in near)}?" if near else ""


def load_yaml(path: str | Path) -> tuple[Any, yaml.Node | None]:
    """Parse ``path``; return (data, node tree). Raises ConfigError on syntax errors and on a
    file that is not UTF-8 (:func:`read_text`)."""
    path = Path(path)
    text = read_text(path)
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
            elif err["type"] in ("literal_error", "enum"):  # name the bad value, and the nearest allowed one
                msg += f", not {err['input']!r}" + _value_fix(err)
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


def _value_fix(err: dict) -> str:
    """'; did you mean X?' for a value outside a closed set of choices."""
    choices = [str(c) for c in ((err.get("ctx") or {}).get("expected_choices") or [])]
    if not choices:  # pydantic gives them as text: "'a', 'b' or 'c'"
        choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
    near = difflib.get_close_matches(str(err.get("input")), choices, n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else ""


def load_model(model: type[M], path: str | Path) -> M:
    """Parse and validate a YAML file into ``model`` (see :func:`validate`)."""
    data, node = load_yaml(path)
    return validate(model, data, path, node)
