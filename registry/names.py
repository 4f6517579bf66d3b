"""The one rule for names the harness shows or turns into file names.

Method, variant, dataset, backbone and plugin (entry-point, distribution) names are 1-64
ASCII letters, digits, ``-``, ``_`` or ``.``, starting with a letter or digit: no ``|``,
``<``, space or control character can reach a markdown table or a terminal, and no ``/``
or leading ``.`` can reach a path. A ``.`` is allowed: the harness looks names up in the
registries' ``module_dict`` (mmengine's ``Registry.get`` would read ``a.b`` as scope ``a``).
Versions follow the same rule with ``+`` and ``!`` added (PEP 440 local versions, epochs).
"""
from __future__ import annotations

import re

from benchmark.errors import BenchmarkError

NAME_MAX_LENGTH = 64
NAME_RULE = "1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
VERSION_RULE = "1-64 letters, digits, '-', '_', '.', '+' or '!', starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
FILE_NAME_MAX_LENGTH = 128


class UnsafeName(BenchmarkError):
    """A name that breaks the rule above (the message never repeats it verbatim)."""


def shown(value) -> str:
    """``value`` as it may be printed: quoted, unsafe characters as ``?``, at most 64 kept."""
    text = str(value)
    return f"'{_UNSAFE.sub('?', text[:NAME_MAX_LENGTH])}{'...' if len(text) > NAME_MAX_LENGTH else ''}'"


def is_safe_name(name, version: bool = False) -> bool:
    """Whether ``name`` follows the rule (``version=True``: the version rule)."""
    return (isinstance(name, str) and len(name) <= NAME_MAX_LENGTH
            and bool((_VERSION if version else _NAME).fullmatch(name)))


def check_name(kind: str, name) -> str:
    """Return ``name`` when it follows the rule; else raise ``UnsafeName`` (one line)."""
    if not is_safe_name(name):
        raise UnsafeName(f"{kind} name {shown(name)} ({len(str(name))} characters) is not "
                         f"allowed: names are {NAME_RULE}")
    return name


def check_version(kind: str, version) -> str:
    """Return ``version`` when it follows the version rule; else raise ``UnsafeName``."""
    if not is_safe_name(version, version=True):
        raise UnsafeName(f"{kind} version {shown(version)} is not allowed: versions are "
                         f"{VERSION_RULE}")
    return version


def safe_file_name(text: str) -> str:
    """One path component made from ``text``: unsafe characters become ``_``, leading dots
    are dropped (never ``.``, ``..`` or hidden), at most 128 characters. A name that follows
    the rule comes back unchanged, so file names of existing caches stay the same."""
    part = _UNSAFE.sub("_", str(text)).lstrip(".")[:FILE_NAME_MAX_LENGTH]
    return part or "_"
