"""The documentation a new user reads: README code that runs as written, links that resolve.

Every ```python block of the README runs here, as written, in a fresh interpreter in an empty
folder (the blocks make their own small data). Every other block is a shell session, and the
paragraph after it names the tests that run those commands (a wheel, the CLI on small data).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def code_blocks(markdown: str) -> list[tuple[str, str, str]]:
    """``(language, code, the text after the block)`` for every fenced block."""
    found = []
    for match in re.finditer(r"```(\w*)\n(.*?)```\n", markdown, flags=re.DOTALL):
        after = markdown[match.end() :].lstrip("\n")
        found.append((match.group(1), match.group(2), after[:200]))
    return found


PYTHON = [code for language, code, _ in code_blocks(README) if language == "python"]


def test_the_readme_shows_code_for_every_way_to_use_it():
    assert len(PYTHON) >= 4
    for needed in ("AmuseCallback", "AmuseMixin", "create_optimizer_v2", "averaged_weights"):
        assert any(needed in code for code in PYTHON), needed


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(PYTHON)), ids=lambda i: f"block{i}")
def test_every_python_block_of_the_readme_runs_as_written(index: int, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", PYTHON[index]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=480,
    )  # fmt: skip
    assert done.returncode == 0, f"{PYTHON[index]}\n---\n{done.stderr[-4000:]}"


def test_every_other_block_is_a_shell_session_that_says_which_tests_run_it():
    for language, code, after in code_blocks(README):
        if language == "python":
            continue
        assert language in ("bash", "text"), (language, code)
        assert after.startswith("(Shell commands;"), code
        for name in re.findall(r"`(tests/[\w/]+\.py)`", after):
            assert (REPO / name).is_file(), name


@pytest.mark.parametrize(
    "heading",
    [
        "## What to expect",
        "## Install",
        "## Five minutes from the wheel",
        "## Quickstart from a checkout",
        "### 1. A Lightning Trainer: `AmuseCallback`",
        "### 2. LightningCLI: `amuse-lightning`",
        "### 3. timm's optimizer factory",
        "### 4. Lightning Fabric or a plain PyTorch loop",
        "## A finished model from any checkpoint",
        "## The contract",
        "## Results",
        "## Documentation",
    ],
)
def test_readme_has_the_sections_a_user_needs(heading):
    assert f"\n{heading}\n" in README


def test_terms_are_defined_before_they_are_used():
    words = README.index("**Words used here.**")
    for term in ("`x`", "`y`", "`z`", "nats", "level", "horizon", "WSD", "budget"):
        first = README.index(term)
        assert first >= words, term
        assert first < README.index("## What to expect"), term


def test_the_readme_is_a_page_not_a_manual():
    assert len(README.splitlines()) < 450  # it was 824 lines


def anchors(markdown: str) -> set[str]:
    explicit = set(re.findall(r'<a id="([^"]+)"></a>', markdown))
    headings = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.*)$", markdown, flags=re.MULTILINE)
    }
    return explicit | headings


def test_readme_links_to_its_own_sections_and_files_resolve():
    assert set(re.findall(r"\]\(#([\w-]+)\)", README)) - anchors(README) == set()
    for target in re.findall(r"\]\(((?:docs|benchmarks|tests)/[^)#]+)", README):
        assert (REPO / target).is_file(), target


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


def test_the_package_description_has_only_absolute_links():
    """The package index shows docs/pypi.md (pyproject's ``readme``), where relative links and
    images break."""
    assert 'readme = "docs/pypi.md"' in (REPO / "pyproject.toml").read_text()
    text = (REPO / "docs" / "pypi.md").read_text()
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert target.startswith("https://"), target
