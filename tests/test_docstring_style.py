"""One docstring style in keras_robust_iqa: Google sections (`Args:`, `Returns:`, `Raises:`) and
Markdown code spans, as Keras writes them; no reST markup, no numpy-style sections."""

import ast
import importlib.util
import pathlib
import re

PACKAGE = pathlib.Path(importlib.util.find_spec("keras_robust_iqa").origin).parent
# reST literals and roles, reST/numpy section underlines, Sphinx field lists.
OTHER_DIALECT = re.compile(r"``|:(class|func|meth|attr|mod|exc):`|^\s*(-{3,}|={3,})\s*$|^\s*:(param|returns?|raises)\b",
                           re.MULTILINE)


def docstrings():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node, clean=False)
                if text:
                    yield f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 1)}", text


def test_no_second_docstring_dialect():
    found = [f"{where}: {match.group(0).strip()!r}" for where, text in docstrings()
             for match in [OTHER_DIALECT.search(text)] if match]
    assert not found, "reST or numpy-style markup in docstrings:\n" + "\n".join(found)


def test_the_check_finds_the_other_dialect():
    for text in ("Read ``data_dir``.", "See :class:`IQATable`.", "Parameters\n----------\nx : int",
                 ":param x: the input"):
        assert OTHER_DIALECT.search(text), text
    assert not OTHER_DIALECT.search("Args:\n    x: the `input`.\n\nReturns:\n    - a list")
