"""The Python blocks of README.md and docs/*.md run, so the docs cannot rot.

A page's ```python blocks run in order in one namespace, like a notebook, in a fresh
working folder (files the blocks write, such as `runs/` or `exported/`, land there). The
built-in dataset they load is the test suite's build of it (`builtin_cache`, 64x64 instead
of 256x256), thinned to every pristine crop and one distorted image in `KEEP_EVERY`: the same
photographs, splits, distortions and labels, with epochs and test splits a few times shorter.

Sizes for the test go in the fence: ```python test: PATCH=32 EPOCHS=1 replaces those
top-level assignments of the block (`PATCH = 64` -> `PATCH = 32`) before it runs; a name
the block does not assign is an error, so an override cannot silently stop applying.
A reader sees the real sizes. ```python no-run marks a block that cannot run here (a
dataset download); they are counted, and kept rare.
"""

import argparse
import ast
import importlib
import pathlib
import re

import numpy as np
import pytest
from helpers import BUILTIN_SIZE

from keras_robust_iqa.data.builtin import pristine_path

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>.*)$")
# The docs' blocks see one distorted built-in image in this many (and every pristine crop).
KEEP_EVERY = 3
README_MOST_LINES = 250
# Blocks that cannot run here (downloads, a GPU cluster): at most this many in all the docs.
MOST_NO_RUN = 2


class Block:
    def __init__(self, page, line, info, code):
        self.page, self.line, self.code = page, line, code
        words = info.split()
        self.language = words[0] if words else ""
        self.no_run = "no-run" in words[1:]
        self.overrides = {}
        if words[1:2] == ["test:"]:
            for item in words[2:]:
                name, equals, value = item.partition("=")
                if not equals or not name.isidentifier():
                    raise ValueError(f"{self.where}: a test override is NAME=VALUE, got {item!r}.")
                self.overrides[name] = ast.literal_eval(value)

    @property
    def where(self):
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page):
    """Every fenced block of a page, with the line its code starts on; indented fences
    (inside a list item) lose their indent."""
    found, lines, i = [], page.read_text().splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match or not match["info"].strip():
            i += 1
            continue
        indent, start = match["indent"], i + 1
        end = next((j for j in range(start, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{page.relative_to(ROOT)}:{i + 1}: a code block is never closed.")
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[start:end])
        found.append(Block(page, start + 1, match["info"].strip(), code))
        i = end + 1
    return found


def python_blocks(page):
    return [block for block in blocks(page) if block.language == "python"]


def with_overrides(block):
    """The block's code compiled with its test overrides in place of its own assignments."""
    tree = ast.parse(block.code, filename=block.where)
    unused = set(block.overrides)
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in block.overrides:
                node.value = ast.copy_location(ast.Constant(block.overrides[name]), node.value)
                unused.discard(name)
    if unused:
        raise AssertionError(f"{block.where}: the test overrides {sorted(unused)}, which the block never assigns "
                             "at its top level.")
    # Line numbers point into the page: a failure names the page's line.
    ast.increment_lineno(tree, block.line - 1)
    return compile(tree, str(block.page), "exec")


RUNNABLE = [page for page in PAGES if any(not b.no_run for b in python_blocks(page))]


@pytest.fixture
def small_builtin(builtin_cache, monkeypatch):
    """`data.load_table("builtin")` reads the suite's small build of the built-in dataset."""
    from keras_robust_iqa import data

    load_table = data.load_table

    def small(name, data_dir=None, **kwargs):
        if str(name).lower() != "builtin" or data_dir is not None:
            return load_table(name, data_dir, **kwargs)
        table = load_table(name, builtin_cache, **{"size": BUILTIN_SIZE, **kwargs})
        keep = [pristine_path(path) == path or i % KEEP_EVERY == 0 for i, path in enumerate(table.paths)]
        return table._select(np.asarray(keep))

    monkeypatch.setattr(data, "load_table", small)


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(page.relative_to(ROOT)) for page in RUNNABLE])
def test_page_python_blocks_run(page, tmp_path, monkeypatch, small_builtin):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for block in python_blocks(page):
        if not block.no_run:
            exec(with_overrides(block), namespace)


def test_every_stage_page_is_there_and_has_code():
    names = {page.name for page in PAGES}
    stages = {"layers.md", "data.md", "models.md", "training.md", "pruning.md", "attacks.md", "deployment.md",
              "performance.md", "experiments.md"}
    assert stages <= names, f"missing docs pages: {sorted(stages - names)}"
    # The README's quickstart and every stage's page but the notebooks show runnable Python.
    for name in ("README.md", *sorted(stages - {"performance.md", "experiments.md"})):
        page = next(page for page in PAGES if page.name == name)
        assert any(not b.no_run for b in python_blocks(page)), f"{name} has no runnable ```python block"


def test_readme_is_a_front_door():
    """A newcomer reads it in minutes: the records live in docs/experiments.md, and every
    command of `robust-iqa` has its row in the README's table."""
    from keras_robust_iqa import cli

    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MOST_LINES

    class Subparsers:  # records the name each command module registers
        names = []

        def add_parser(self, name, **kwargs):
            self.names.append(name)
            return argparse.ArgumentParser(prog=name)

    for module in cli.COMMANDS:
        importlib.import_module(module).add_parser(Subparsers())
    assert len(Subparsers.names) == len(cli.COMMANDS)
    for command in Subparsers.names:
        assert f"| `robust-iqa {command}" in readme, f"the README's CLI table has no row for `{command}`"


def test_no_run_blocks_are_rare_and_overrides_parse():
    no_run = [block.where for page in PAGES for block in python_blocks(page) if block.no_run]
    assert len(no_run) <= MOST_NO_RUN, f"too many ```python no-run blocks: {no_run}"
    for page in PAGES:
        for block in python_blocks(page):
            if not block.no_run:
                with_overrides(block)  # parses, and every override names an assignment


def test_links_between_pages_resolve():
    """Relative links of README.md and docs/ point at files that exist (and at headings that do)."""
    link = re.compile(r"\]\((?!https?://|mailto:)([^)#\s]*)(?:#([^)\s]*))?\)")
    broken = []
    for page in PAGES:
        prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code is not links
        prose = re.sub(r"`[^`\n]*`", "", prose)
        for target, anchor in link.findall(prose):
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {target}#{anchor}")
    assert not broken, f"broken links: {broken}"


def anchors(page):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    result = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            result.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return result
