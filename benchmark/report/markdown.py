"""Markdown output that names cannot break: escaped cell text, code spans, tables through
tabulate, and file names derived from names, sanitised and confined to the output folder.

A method, dataset or plugin name (or an error message) is data, never markup: ``|`` is
escaped (GitHub tables split cells on it, even inside code spans), HTML's ``<``, ``>`` and
``&`` become entities, and the characters that open markdown emphasis, links or code
(``\\ ` * [ ]`` and a word-boundary ``_``) get a backslash.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..errors import BenchmarkError

_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_MARKDOWN = re.compile(r"([\\`*\[\]|])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def escape(value) -> str:
    """Text for a markdown cell or paragraph: one line, no markup, no HTML."""
    text = " ".join(str(value).split())
    text = "".join(_HTML.get(ch, ch) for ch in text)
    return _MARKDOWN.sub(lambda m: "\\" + m.group(0), text)


def code(value) -> str:
    """``value`` as a code span (shown literally, HTML included); ``|`` escaped for tables."""
    text = " ".join(str(value).split()).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub pipe table of already-escaped cells (tabulate, no alignment padding)."""
    from tabulate import tabulate
    if not rows:
        rows = [["" for _ in header]]
    text = tabulate(rows, headers=header, tablefmt="github", disable_numparse=True,
                    stralign=None, numalign=None)
    lines = text.splitlines()
    return "\n".join([_compact(lines[0]), "|" + "---|" * len(header)]
                     + [_compact(line) for line in lines[2:]])


def _compact(line: str) -> str:
    """Drop tabulate's column padding (cells already hold exactly what is shown); ``|``
    inside a cell is always escaped, so only unescaped pipes separate cells."""
    cells = re.split(r"(?<!\\)\|", line)[1:-1]
    return "| " + " | ".join(c.strip() for c in cells) + " |"


def safe_name(text: str) -> str:
    """A file-name stem from a name: letters, digits and ``.=+-`` kept, everything else
    ``_``, no leading dot; when that changed the name, a digest of the original is added so
    two names never share a file."""
    stem = re.sub(r"[^A-Za-z0-9.=+-]+", "_", str(text)).strip("_").lstrip(".") or "_"
    if stem != text:
        stem = f"{stem[:80]}-{hashlib.sha256(str(text).encode()).hexdigest()[:8]}"
    return stem


def confined(out: Path, name: str) -> Path:
    """``out / name``, refusing any path that would leave ``out``."""
    root = Path(out).resolve()
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise BenchmarkError(f"refusing to write {name!r} outside {out}")
    return path
