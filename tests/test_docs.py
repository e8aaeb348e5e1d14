"""The documentation a new user reads: snippets that import what they use, links that resolve."""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def unbound_names(code: str) -> set[str]:
    """Names a snippet reads but neither imports, defines nor gets from builtins."""
    tree = ast.parse(code)
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
            bound |= {a.arg for a in node.args.args} if isinstance(node, ast.FunctionDef) else set()
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return read - bound


USER_NAMES = {"dm", "model", "loader", "val_loader", "loss_fn", "accuracy", "evaluate",
              "build_net", "optimizer", "train_batches"}  # fmt: skip
"""What a snippet may take from the reader's own code; everything else must be imported."""


def test_every_python_snippet_imports_what_it_uses():
    blocks = python_blocks(README)
    assert len(blocks) >= 8
    for block in blocks:
        assert unbound_names(block) <= USER_NAMES, block


def test_first_lightning_snippet_imports_what_it_uses():
    lightning = README[README.index("### 1. A Lightning Trainer") :]
    first = python_blocks(lightning)[0]
    assert unbound_names(first) == {"dm"}  # the user's datamodule


def test_timm_snippet_imports_what_it_uses():
    timm_section = README[README.index("### 3. timm's optimizer factory") :]
    assert unbound_names(python_blocks(timm_section)[0]) == set()


@pytest.mark.parametrize(
    "heading",
    [
        "## Install",
        "## Quickstart",
        "### 1. A Lightning Trainer: `AmuseCallback`",
        "### 2. LightningCLI from a wheel: `amuse-lightning`",
        "### 3. timm's optimizer factory",
        "### 4. Lightning Fabric or a plain PyTorch loop",
        "## A finished model from any checkpoint",
        "## The contract",
        "## Results",
    ],
)
def test_readme_has_the_sections_a_user_needs(heading):
    assert f"\n{heading}\n" in README


def test_readme_links_to_its_own_sections_resolve():
    targets = set(re.findall(r"\]\(#([\w-]+)\)", README))
    assert "the-contract" in targets
    assert targets - anchors(README) == set()


def anchors(markdown: str) -> set[str]:
    explicit = set(re.findall(r'<a id="([^"]+)"></a>', markdown))
    headings = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.*)$", markdown, flags=re.MULTILINE)
    }
    return explicit | headings


def test_every_link_to_a_docs_anchor_resolves():
    """README, docs/ and the shipped configs link docs/*.md#anchor; every anchor must exist."""
    sources = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    sources += sorted((REPO / "amuse_lightning" / "configs").glob("*.yaml"))
    links = set()
    for source in sources:
        for target, anchor in re.findall(r"([\w./-]+\.md)#([\w-]+)", source.read_text()):
            path = source.parent / target  # relative, or written from the repository root
            links.add((source.name, path if path.is_file() else REPO / target, anchor))
    assert ("cifar10_resnet18.yaml", REPO / "docs/algorithm.md", "hyperparameters") in links
    missing = {
        (name, str(path.relative_to(REPO)), anchor)
        for name, path, anchor in links
        if not path.is_file() or anchor not in anchors(path.read_text())
    }
    assert missing == set()
