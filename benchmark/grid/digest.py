"""A digest of a method's code, part of its run id: an edited loss or default is a new run.

The files digested (:func:`method_files`) are those of the module that defines the method
class (every file of its package folder when the module is a package) and, transitively, of
every module of the same top-level package that it takes names from (``thesis-sld`` uses
``plugins.csq`` and ``plugins.thesis_blocks``). Python files are digested as their syntax
tree without docstrings and comments, and without class-level ``search_space``
declarations (read only by ``tune``, whose trials record the values they draw), so
re-wording a docstring does not re-run a method; other files (data a plugin ships) byte by
byte. Harness code is covered by ``runs.EVAL_PROTOCOL`` instead.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import sys
from functools import lru_cache
from pathlib import Path

#: class-level assignments left out of the digest (they cannot change a run's numbers)
UNDIGESTED = ("search_space",)


def _module_files(module) -> dict[str, Path]:
    """Relative path (from the top-level package's parent) -> file, for one module."""
    path = Path(inspect.getfile(module)).resolve()
    depth = module.__name__.count(".") + (path.name == "__init__.py")
    base = path.parents[depth]
    files = [path]
    if path.name == "__init__.py":
        files = [f for f in sorted(path.parent.rglob("*")) if f.is_file()
                 and "__pycache__" not in f.parts and f.suffix != ".pyc"
                 and not f.name.startswith(".")]
    return {f.relative_to(base).as_posix(): f for f in files}


def _imported_modules(module) -> set[str]:
    """Modules of ``module``'s top-level package that its global names come from."""
    top = module.__name__.split(".")[0]
    names = set()
    for value in vars(module).values():
        name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
        if isinstance(name, str) and name.split(".")[0] == top and name in sys.modules:
            names.add(name)
    return names - {module.__name__}


def method_files(cls) -> dict[str, Path]:
    """Every file that makes up ``cls``'s code (see the module docstring)."""
    seen, todo, files = set(), [cls.__module__], {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        module = sys.modules[name]
        files.update(_module_files(module))
        todo.extend(sorted(_imported_modules(module)))
    return dict(sorted(files.items()))


def _strip(tree: ast.AST) -> ast.AST:
    """Drop docstrings and ``UNDIGESTED`` class-level assignments from a syntax tree."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            body.pop(0)
        if isinstance(node, ast.ClassDef):
            node.body = [s for s in body if not _undigested(s)] or [ast.Pass()]
        elif not body:
            node.body = [ast.Pass()]
    return tree


def _undigested(statement: ast.stmt) -> bool:
    targets = (statement.targets if isinstance(statement, ast.Assign)
               else [statement.target] if isinstance(statement, ast.AnnAssign) else [])
    return any(isinstance(t, ast.Name) and t.id in UNDIGESTED for t in targets)


def normalised(path: str, content: bytes) -> bytes:
    """What is digested of one file: a Python file's stripped syntax tree, else its bytes."""
    if not path.endswith(".py"):
        return content
    try:
        return ast.unparse(_strip(ast.parse(content))).encode()
    except SyntaxError:
        return content


def digest_of(files: dict[str, bytes]) -> str:
    """sha256 (16 hex digits) over the sorted (path, normalised content) pairs."""
    digest = hashlib.sha256()
    for path in sorted(files):
        body = normalised(path, files[path])
        digest.update(f"{path}\0{len(body)}\0".encode())
        digest.update(body)
    return digest.hexdigest()[:16]


@lru_cache(maxsize=None)
def code_digest(cls) -> str:
    """The digest of ``cls``'s code as it is on disk now."""
    return digest_of({path: file.read_bytes() for path, file in method_files(cls).items()})
