"""The package's layout is its pipeline: every module belongs to one stage, and imports only
go down (to its own stage or an earlier one), so no stage depends on a later one and the
modules' imports form no cycle. A new module must be given its stage here."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "maskspec"

# Stage by stage, first to last: a module (or a package, for all its modules) per entry.
STAGES = [
    {"model", "errors", "parse", "documents", "trees", "background", "deferred",
     "caches", "scan", "sorting"},  # leaves
    {"ir"},
    {"primitives", "codegen"},  # primitive classes; IR expressions as source
    {"analysis", "compiler"},  # a term analysed once into its row program
    {"inputs", "context"},  # binding sizes and inputs; the build context
    {"lower", "dense", "mask_mod", "elements"},  # evaluation: row slots, the element meaning
    {"separable"},  # conditions read one side at a time: per-block summaries
    {"rowblocks"},  # row programs over a whole block of rows, as bounds
    {"blocks"},  # exact block classes, ordered indices
    {"assemble"},  # the build's classes: whole row blocks as runs, the rest row by row
    {"cuda"},  # kernels, generator, plans, dispatch
    {"custom_op", "targets", "standalone"},
    {"api"},
    {"fast", "integrations", "verify", "cases", "render", "cli", "__init__", "__main__"},
]
RANK = {name: i for i, stage in enumerate(STAGES) for name in stage}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def _stage(module: str) -> int:
    """The stage of a dotted module name (``maskspec.cuda.plans`` is ``cuda``'s)."""
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else "__init__"
    if name not in RANK:
        raise AssertionError(f"{module} has no stage in tests/test_layout.py STAGES")
    return RANK[name]


def _imports(path: Path, module: str | None = None) -> set[str]:
    """The maskspec modules a file (module ``module``, by default its place in the package)
    imports, anywhere in it (function-level imports too)."""
    here = (module or _module(path)).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("maskspec")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.startswith("maskspec"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names
                          if (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).exists()
                          or (PACKAGE.parent / (f"{base}.{a.name}".replace(".", "/") + ".py"))
                          .exists()}
    return found - {"maskspec"}


FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: _module(p))
def test_imports_only_go_down(path):
    mine = _stage(_module(path))
    later = sorted(m for m in _imports(path) if _stage(m) > mine)
    assert not later, f"{_module(path)} (stage {mine}) imports later stages: {later}"


def test_no_import_cycles():
    graph = {_module(p): {m for m in _imports(p) if m != _module(p)} for p in FILES}
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, " → ".join((*path, node))
        if node in done:
            return
        for nxt in graph.get(node, ()):
            visit(nxt, (*path, node))
        done.add(node)

    for node in graph:
        visit(node, ())


def test_the_layout_check_sees_a_violation(tmp_path):
    """The checker itself: a front-stage module importing the public face, absolutely,
    relatively or inside a function, is reported."""
    probe = tmp_path / "probe.py"
    for text in ("from maskspec.api import load\n", "from . import api\n",
                 "def f():\n    import maskspec.cuda.plans\n"):
        probe.write_text(text)
        found = _imports(probe, "maskspec.parse")
        assert found and max(_stage(m) for m in found) > _stage("maskspec.parse"), text
