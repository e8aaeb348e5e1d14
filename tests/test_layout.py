"""The layering rules, read from the source: imports go one way and tests share only helpers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "amuse_lightning"


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                names.add(node.module or "")
    return names


def starts_with(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("layer", ["optim", "partition", "averaging", "integrations"])
def test_core_layers_import_no_lightning(layer: str) -> None:
    banned = ("lightning", "pytorch_lightning", "amuse_lightning.lightning")
    banned += ("amuse_lightning.examples", "amuse_lightning.cli")
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files
    offenders = {
        str(f.relative_to(ROOT)): sorted(n for n in imported_modules(f) if starts_with(n, banned))
        for f in files
    }
    assert {f: n for f, n in offenders.items() if n} == {}


def test_lightning_layer_never_imports_the_examples() -> None:
    """The library never imports its own examples: the CLI and callback live below them."""
    files = sorted((PACKAGE / "lightning").rglob("*.py"))
    assert files
    offenders = {
        str(f.relative_to(ROOT)): sorted(
            n for n in imported_modules(f) if starts_with(n, ("amuse_lightning.examples",))
        )
        for f in files
    }
    assert {f: n for f, n in offenders.items() if n} == {}


def test_lightning_layer_never_imports_the_cli() -> None:
    """The command sits on top of the Lightning layer: ``amuse_lightning.lightning`` imports
    nothing from ``amuse_lightning.cli`` (also not lazily, inside a function), and the
    command-line machinery (LightningCLI, jsonargparse) lives in ``cli/`` only."""
    files = sorted((PACKAGE / "lightning").rglob("*.py"))
    assert files
    banned = ("amuse_lightning.cli", "lightning.pytorch.cli", "jsonargparse")
    offenders = {
        str(f.relative_to(ROOT)): sorted(n for n in imported_modules(f) if starts_with(n, banned))
        for f in files
    }
    assert {f: n for f, n in offenders.items() if n} == {}


def test_the_cli_never_imports_the_examples_and_its_imports_have_no_cycle() -> None:
    """The CLI names example classes only in configs; inside ``amuse_lightning/cli/`` imports go
    one way (a module graph without cycles, counting imports inside functions)."""
    files = sorted((PACKAGE / "cli").rglob("*.py"))
    assert len(files) > 5
    parts = {f: f.relative_to(ROOT).with_suffix("").parts for f in files}
    modules = {".".join(p[:-1] if p[-1] == "__init__" else p): f for f, p in parts.items()}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        imported = imported_modules(path)
        assert not [n for n in imported if starts_with(n, ("amuse_lightning.examples",))], name
        graph[name] = {n for n in imported if n in modules and n != name}

    def cycle_from(node: str, trail: tuple[str, ...]) -> tuple[str, ...] | None:
        if node in trail:
            return (*trail[trail.index(node) :], node)
        for nxt in sorted(graph[node]):
            found = cycle_from(nxt, (*trail, node))
            if found:
                return found
        return None

    cycles = [c for c in (cycle_from(n, ()) for n in sorted(graph)) if c]
    assert cycles == []


def test_no_test_module_imports_another_test_module() -> None:
    files = sorted((ROOT / "tests").rglob("*.py"))
    assert len(files) > 10
    offenders = {
        str(f.relative_to(ROOT)): sorted(
            n for n in imported_modules(f) if n.startswith("tests.test_") or n == "tests.conftest"
        )
        for f in files
    }
    assert {f: n for f, n in offenders.items() if n} == {}


def test_relative_imports_are_resolved_like_python_does() -> None:
    """Guards the checks above: a relative import inside the package is seen under its name."""
    names = imported_modules(PACKAGE / "partition" / "rules.py")
    assert "amuse_lightning.partition.finders" in names
    assert "torch" in names


@pytest.mark.xdist_group("multiprocess")  # runs a fresh interpreter
def test_the_core_imports_without_lightning_and_the_lightning_names_resolve_lazily() -> None:
    """What the layering promises a user, checked in a fresh interpreter: the optimizer and the
    partition (also through the package's top level) load no Lightning; the Lightning names of
    the public API still resolve, and only then is Lightning loaded."""
    code = (
        "import sys\n"
        "import amuse_lightning, amuse_lightning.optim, amuse_lightning.partition\n"
        "import amuse_lightning.averaging\n"
        "from amuse_lightning import AMUSE, SFMuon, partition_parameters\n"
        "assert 'lightning' not in sys.modules, 'the core loaded Lightning'\n"
        "from amuse_lightning import AmuseCallback, AmuseMixin, default_amuse_factory\n"
        "assert 'lightning' in sys.modules\n"
        "assert AmuseCallback.__module__ == 'amuse_lightning.lightning.callback'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=480)
