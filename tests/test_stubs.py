"""The extension's type stubs (delgrad/_core.pyi) name exactly what the extension has."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import delgrad._core as core

STUB = Path(core.__file__).with_name("_core.pyi")


def _public(names) -> set[str]:
    return {n for n in names if not (n.startswith("__") and n.endswith("__"))}


def _stub() -> tuple[set[str], dict[str, set[str]]]:
    tree = ast.parse(STUB.read_text())
    names, classes = set(), {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
            classes[node.name] = _public(members)
    return _public(names), classes


def test_stub_names_every_function_and_class():
    names, _ = _stub()
    assert names == _public(dir(core))


def test_stub_names_every_method_of_the_extension_classes():
    _, classes = _stub()
    for name, members in classes.items():
        cls = getattr(core, name)
        if issubclass(cls, BaseException):
            continue  # exception classes inherit their members; FrameError's code is per instance
        own = _public(k for k, v in vars(cls).items() if not inspect.isclass(v))
        assert members == own, name
