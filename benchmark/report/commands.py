"""The report-side commands of ``python -m benchmark``: ``runs`` (a results folder's runs
as a table), ``show`` (one run) and ``profile`` (re-measure stored runs' efficiency in one
process). Parsers and thin entry points only; the work is imported when a command runs."""
from __future__ import annotations


def cmd_runs(args) -> int:
    from .inspect import cmd_runs as runs
    return runs(args)


def cmd_show(args) -> int:
    from .inspect import cmd_show as show
    return show(args)


def cmd_profile(args) -> int:
    from ..eval.reprofile import cmd_profile as profile
    return profile(args)


def _runs_parser(sub) -> None:
    runs = sub.add_parser("runs", help="list the runs of a results folder as a table")
    runs.add_argument("--results", default="results", help="a results folder (SQLite store)")
    runs.add_argument("--status", choices=["ok", "failed"], default=None)
    runs.add_argument("--method", default=None)


def _show_parser(sub) -> None:
    show = sub.add_parser("show", help="one run: spec, metrics, health, efficiency, log tail")
    show.add_argument("run_id", help="a run id (or a unique prefix)")
    show.add_argument("--results", default="results", help="a results folder (SQLite store)")
    show.add_argument("--tail", type=int, default=40, help="log lines to print")


def _profile_parser(sub) -> None:
    profile = sub.add_parser("profile", help="re-measure stored runs' efficiency in one process")
    source = profile.add_mutually_exclusive_group()
    source.add_argument("--results", default="results", help="a results folder (SQLite store)")
    source.add_argument("--records", default=None, help="a records.jsonl export (updated in place)")
    profile.add_argument("--data-root", default=None,
                         help="folder holding the dataset folders (for class counts)")
    profile.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


PARSERS = (_runs_parser, _show_parser, _profile_parser)
COMMANDS = {"runs": cmd_runs, "show": cmd_show, "profile": cmd_profile}
