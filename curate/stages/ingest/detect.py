"""What each input of ``curate run PATH…`` is: one :class:`~curate.config.SourceConfig` per path.

The first run needs no config file. Each argument is read as the config's ``sources`` would
name it, and becomes one source (named after the path, made unique):

====================================================  ===============================================
argument                                               source
====================================================  ===============================================
``*.tar`` file, or a glob / brace pattern of them      ``webdataset`` (the pattern as given)
``*.parquet`` / ``*.tsv`` / ``*.tsv.gz`` / ``*.txt``   ``metadata`` (``schema: auto``: the layout is
file, or a pattern of them                             detected from the columns), with ``images``: their
                                                       folder when it holds image files
folder with ``NNNNN.parquet`` and ``NNNNN.tar`` /      ``img2dataset``
``NNNNN/`` / ``NNNNN_stats.json``
folder with ``state.json`` and ``dataset_info.json``   ``hf_dataset`` (``datasets.save_to_disk``)
folder with parquet/TSV files at its top              ``metadata`` (those files) with ``images``: the
                                                       folder (a layout's relative file column)
folder with tar shards and no image files              ``webdataset`` (every ``.tar`` below it)
folder with image files                                ``images`` (one sample per file, ``.txt``
                                                       sidecars as captions)
``s3://…`` and other URIs                              by suffix, as a file or pattern above
====================================================  ===============================================

Anything else (a single image file, a pattern matching nothing or mixing kinds, an empty
folder, a YAML file among inputs) is an :class:`~curate.errors.InputError` that says what to
pass instead. Paths are made absolute against the working directory, so the config written
into the workspace (:func:`curate.api.run_inputs`) runs the same from anywhere.
"""
from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

from curate.config import SourceConfig
from curate.errors import InputError
from curate.store.braces import expand_braces
from curate.stages.ingest.units import IMAGE_EXTS, TSV_EXTS

#: metadata files that mark a folder as a metadata source (``.txt`` files in a folder are caption sidecars)
FOLDER_METADATA_EXTS = (".parquet", ".tsv", ".tsv.gz")


def _suffix(name: str) -> str:
    low = name.lower()
    for ext in (".tsv.gz", ".txt.gz"):
        if low.endswith(ext):
            return ext
    return os.path.splitext(low)[1]


def _kind_of_file(name: str) -> str | None:
    ext = _suffix(name)
    if ext == ".tar":
        return "webdataset"
    if ext == ".parquet" or ext in TSV_EXTS:
        return "metadata"
    if ext in IMAGE_EXTS:
        return "image"
    if ext in (".yaml", ".yml"):
        return "config"
    return None


def _is_pattern(s: str) -> bool:
    return any(ch in s for ch in "*?[{")


def _files_below(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            yield Path(dirpath) / f


def _folder(path: Path) -> dict[str, str]:
    top = {e.name: e for e in os.scandir(path)}
    if "state.json" in top and "dataset_info.json" in top:
        return {"hf_dataset": str(path)}
    stems = [n[: -len(".parquet")] for n in top if n.endswith(".parquet") and n[: -len(".parquet")].isdigit()]
    if any(f"{s}.tar" in top or f"{s}_stats.json" in top or (s in top and top[s].is_dir()) for s in stems):
        return {"img2dataset": str(path)}
    meta = sorted({_suffix(n) for n, e in top.items() if e.is_file() and _suffix(n) in FOLDER_METADATA_EXTS})
    has_image = any(_suffix(f.name) in IMAGE_EXTS for f in _files_below(path))
    if len(meta) > 1:
        raise InputError(f"input {path} holds metadata files of several kinds ({', '.join(meta)}); "
                         f"pass them as separate patterns, e.g. '{path}/*{meta[0]}'")
    if meta:
        src = {"metadata": str(path / f"*{meta[0]}")}
        return {**src, "images": str(path)} if has_image else src
    if not has_image:
        if any(_suffix(f.name) == ".tar" for f in _files_below(path)):
            return {"webdataset": str(path / "**" / "*.tar")}
        raise InputError(f"input {path} holds no image files, metadata files (.parquet, .tsv), tar shards, "
                         "img2dataset output or save_to_disk dataset")
    return {"images": str(path)}


def _images_beside(files: list[str], arg: str) -> dict[str, str]:
    """``{'images': folder}`` when every local metadata file of ``files`` sits in one folder that
    holds image files (a layout's relative file column, e.g. fondant's ``file``, names them), else {}."""
    if "://" in arg:
        return {}
    parents = {Path(f).resolve().parent for f in files}
    if len(parents) != 1:
        return {}
    folder = parents.pop()
    return {"images": str(folder)} if any(_suffix(f.name) in IMAGE_EXTS for f in _files_below(folder)) else {}


def _pattern(arg: str, shown: str) -> dict[str, str]:
    """A glob or brace pattern (local or URI): its matches' kind decides the source."""
    if "://" in arg:
        names = [arg]  # listed by the ingest stage; its suffix says what it is
    else:
        try:
            alts = expand_braces(arg)
        except ValueError as e:
            raise InputError(f"input {e}") from None
        names = [m for a in alts for m in (glob.glob(a, recursive=True) if _is_pattern(a) else [a] if os.path.exists(a) else [])]
        if not names:
            raise InputError(f"input {shown!r} matches no file")
    kinds = {_kind_of_file(n) if not os.path.isdir(n) else "folder" for n in names}
    if kinds == {"webdataset"}:
        return {"webdataset": arg}
    if kinds == {"metadata"}:
        return {"metadata": arg, **_images_beside(names, arg)}
    if kinds == {"image"}:
        raise InputError(f"input {shown!r} names image files; pass the folder that holds them (one sample per file)")
    raise InputError(f"input {shown!r} names files of several kinds or that curate does not read "
                     f"({', '.join(sorted(str(k) for k in kinds))}); pass tar shards, metadata files and image "
                     "folders as separate arguments")


def _source_of(arg: str, cwd: Path) -> dict[str, str]:
    if "://" in arg:
        return _pattern(arg, arg)
    path = Path(arg).expanduser()
    path = path if path.is_absolute() else cwd / path
    if _is_pattern(arg):
        return _pattern(str(path), arg)
    if path.is_dir():
        return _folder(path.resolve())
    if not path.exists():
        raise InputError(f"input {arg!r} does not exist")
    kind = _kind_of_file(path.name)
    if kind == "metadata":
        return {"metadata": str(path.resolve()), **_images_beside([str(path.resolve())], arg)}
    if kind == "webdataset":
        return {kind: str(path.resolve())}
    if kind == "config":
        raise InputError(f"{arg} looks like a config file: pass it alone (`curate run {arg}`), not among inputs")
    if kind == "image":
        raise InputError(f"input {arg!r} is one image file; pass the folder that holds it (one sample per file)")
    raise InputError(f"input {arg!r}: curate cannot tell what it is (by its suffix); inputs are tar shards, "
                     ".parquet/.tsv metadata files, image folders, img2dataset folders or save_to_disk folders")


def _name(arg: str, taken: set[str]) -> str:
    stem = re.sub(r"\{[^}]*\}|[*?\[\]]", "", arg.rstrip("/").split("://")[-1])
    parts = [p for p in re.split(r"[/\\]", stem) if p not in ("", ".", "..", "**")]
    base = parts[-1] if parts else "source"
    for ext in (".tsv.gz", ".txt.gz", ".parquet", ".tsv", ".txt", ".tar"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    if base.strip("._-") == "" and len(parts) > 1:  # `shards/*.tar` -> shards
        base = parts[-2]
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "source"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def detect_sources(inputs: Sequence[str], cwd: str | Path | None = None) -> list[SourceConfig]:
    """One source per input path, as the table in the module docstring says.

    Args:
        inputs: paths, globs, brace patterns or URIs, as typed on the command line.
        cwd: what relative paths are relative to (default: the working directory).

    Returns:
        the sources, in the order given, each named after its path (unique; [A-Za-z0-9_.-]).

    Raises:
        InputError: an input that does not exist, matches nothing, or is not something curate reads,
            saying what to pass instead; no inputs at all.
    """
    if not inputs:
        raise InputError("no inputs: pass parquet/TSV files, globs, image folders, webdataset shards or "
                         "img2dataset folders (or one CONFIG.yaml)")
    base = Path(cwd) if cwd is not None else Path.cwd()
    taken: set[str] = set()
    out = []
    for arg in inputs:
        src = _source_of(str(arg), base)
        out.append(SourceConfig(name=_name(str(arg), taken), **src))
    return out
