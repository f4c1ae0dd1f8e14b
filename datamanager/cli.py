"""The ``datamanager`` command line (also ``python -m datamanager``).

``main(argv) -> int``: 0 on success, 1 for an error (printed as ``Error: ...``
on stderr), 2 for a usage error (a bare ``datamanager`` is one: it prints the
help on stderr), 130 when stopped by Ctrl-C.  Warnings, such as a session
skipped as corrupt, are printed as one ``warning: ...`` line each on stderr.
Data directories are read in safe mode (no code stored in them runs) unless
``--unsafe`` is given.
"""

from __future__ import annotations

import argparse
import itertools
import os
import reprlib
import sys
import warnings
from typing import Any, Callable, Sequence

from ._html import human_size as _size
from ._sidecodec import pandas_kind
from .errors import DataManagerError, DataManagerWarning, UnsafeValueError, UnsupportedValueError

__all__ = ["main"]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _table(header: Sequence[str], rows: list[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _open(datadir: str, unsafe: bool, must_exist: bool = True) -> Any:
    from .manager import DataManager

    if must_exist and not os.path.isdir(datadir):
        raise FileNotFoundError(f"no such data directory: {datadir}")
    return DataManager.from_path(datadir, safe=not unsafe)


def _summary(value: Any) -> tuple[str, str, str]:
    """``(type, shape or length, short preview)`` without printing the value."""
    import numpy as np

    from .recordings.recording import Recording

    kind = type(value).__name__
    if isinstance(value, np.ndarray):
        if value.dtype.names is not None:
            return "ndarray[structured]", str(value.shape), _clip(_fields(value.dtype))
        return f"ndarray[{value.dtype}]", str(value.shape), ""
    table = pandas_kind(value)
    if table == "DataFrame":  # its columns and their dtypes, never its rows
        columns = value.dtypes.iloc[:_SHOWN].items()
        return kind, str(value.shape), _clip(", ".join(f"{c} {t}" for c, t in columns))
    if table == "Series":
        return kind, str(value.shape), _clip(f"{value.dtype}, name {value.name!r}")
    if isinstance(value, (list, tuple, dict)) and value and _all_arrays(value):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        shown = [f"{k}: {v.dtype}{list(v.shape)}" for k, v in itertools.islice(items, _SHOWN)]
        return kind, f"len {len(value)}", _clip(", ".join(shown))
    if isinstance(value, (list, tuple, dict, set, frozenset, str, bytes)):
        return kind, f"len {len(value)}", _preview(value)
    if isinstance(value, Recording):
        return kind, str(value.shape), ", ".join(value.columns)[:40]
    return kind, "", _preview(value)


#: Columns, fields or arrays a preview names at most.
_SHOWN = 8


def _all_arrays(value: Any) -> bool:
    import numpy as np

    items = value.values() if isinstance(value, dict) else value
    return all(isinstance(v, np.ndarray) for v in items)


def _fields(dtype: Any) -> str:
    return ", ".join(f"{n} {dtype.fields[n][0]}" for n in dtype.names[:_SHOWN])


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _preview(value: Any) -> str:
    # reprlib stops after a few levels and items: a stored list of a million
    # items costs nothing, and one nested a million deep cannot recurse.
    preview = " ".join(reprlib.repr(value).split())  # one line of the table
    return preview if len(preview) <= 40 else preview[:37] + "..."


# -- commands ------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    frame = _open(args.datadir, args.unsafe).sessions()
    if frame.empty:
        print(f"no sessions in {args.datadir}")
        return 0
    rows = []
    for rec in frame.to_dict("records"):
        created = rec.get("created")
        created = created.strftime("%Y-%m-%d %H:%M:%S") if hasattr(created, "strftime") else ""
        rows.append([rec["name"], created, rec.get("host") or "", rec["keys"], _size(rec["size"])])
    print(_table(["name", "created (UTC)", "host", "keys", "size"], rows))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from .readers import match_keys

    for key in match_keys(_open(args.datadir, args.unsafe).keys(), args.prefix):
        print(key)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    import numpy as np

    from .collator import check_dtypes

    dm = _open(args.datadir, args.unsafe)
    rows, kinds, total, trailing = [], set(), 0, set()
    dtypes: list[tuple[str, Any]] = []  # (session, empty array): get_merged's dtype rule
    for reader in dm.iter_sessions():
        with reader:
            if args.key not in reader:
                continue
            value = reader[args.key]  # one value in memory at a time
        kind, shape, preview = _summary(value)
        rows.append([reader.name, kind, shape, preview])
        if isinstance(value, np.ndarray):
            kinds.add("ndarray")
            total += value.shape[0] if value.ndim else 0
            trailing.add((value.ndim > 0, value.shape[1:], value.dtype))
            dtypes.append((reader.name, np.empty(0, value.dtype)))
        elif isinstance(value, (list, tuple)):
            kinds.add("sequence")
            total += len(value)
        elif (table := pandas_kind(value)) is not None:
            kinds.add(table)
            total += len(value)
        else:
            kinds.add("other")
        del value
    if not rows:
        raise KeyError(f"no session holds the key {args.key!r}")
    print(f"key {args.key!r}: held by {len(rows)} session(s)")
    print(_table(["session", "type", "shape", "value"], rows))
    if kinds == {"ndarray"} and len(trailing) == 1 and next(iter(trailing))[0]:
        _, row, dtype = next(iter(trailing))
        name = "structured" if dtype.names else dtype
        print(f"merged: ndarray[{name}] of shape {(total, *row)}")
    elif kinds == {"ndarray"}:
        try:
            common = check_dtypes(args.key, dtypes)
        except TypeError as exc:
            print(f"merged: refused: {exc}")
        else:
            print(f"merged: ndarray[{common}] of {total} rows if shapes agree")
    elif kinds == {"sequence"}:
        print(f"merged: list of {total} items")
    elif kinds in ({"DataFrame"}, {"Series"}):
        (kind,) = kinds
        print(f"merged: {kind} of {total} rows, outer index level 'session'")
    else:
        print(
            "merged: not mergeable (get_merged needs all lists/tuples, all arrays, "
            "all DataFrames or all Series)"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .hdf5 import export_hdf5

    dm = _open(args.datadir, args.unsafe)
    if os.path.lexists(args.out) and not args.force:
        raise FileExistsError(f"{args.out} exists (use --force to replace it)")
    report = export_hdf5(
        dm,
        args.out,
        match=args.match,
        merged=args.merged,
        compression=args.compression,
        overwrite=args.force,
        on_unsupported=args.on_unsupported,
        progress=False if args.no_progress else None,
    )
    print(
        f"wrote {report.path}: {report.sessions} sessions, {report.values} values, "
        f"{_size(report.nbytes)} in {report.seconds:.2f} s"
    )
    if args.merged:
        print(f"merged {len(report.merged)} keys ({len(report.stacked)} stacked)")
        for key, reason in report.not_merged.items():
            print(f"  not merged: {key}: {reason}")
    for session, key, type_name in report.skipped:
        print(f"  skipped: {session} {key} ({type_name})")
    for session, key, type_name in report.pickled:
        print(f"  pickled: {session} {key} ({type_name})")
    return 0


def cmd_nwb(args: argparse.Namespace) -> int:
    from .nwb import export_nwb
    from .recordings import load_recording

    first, rest = args.sources[0], args.sources[1:]
    units = dict(_unit_pair(text) for text in args.unit)
    if os.path.isdir(first):
        prefixes = tuple(rest) or ("",)
        dm = _open(first, args.unsafe)
        source: Any = dm
        keys: Any = lambda key: key.startswith(prefixes)  # noqa: E731
    else:
        source = [rec for path in args.sources for rec in load_recording(path)]
        keys = None
    path = export_nwb(
        source,
        args.out,
        keys=keys,
        session_description=args.description,
        session_start_time=args.start_time,
        overwrite=args.overwrite,
        time_unit=args.time_unit,
        units=units or None,
    )
    print(f"wrote {path}")
    return 0


def _unit_pair(text: str) -> tuple[str, str]:
    column, eq, unit = text.rpartition("=")
    if not eq or not column or not unit:
        raise ValueError(f"--unit takes COLUMN=UNIT, not {text!r}")
    return column, unit


def cmd_verify(args: argparse.Namespace) -> int:
    dm = _open(args.datadir, args.unsafe)
    problems = dm.verify()
    for problem in problems:
        print(f"{problem.path}: {problem.message}")
    if problems:
        print(f"Error: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{args.datadir}: no problems found")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    dm = _open(args.datadir, args.unsafe)
    paths = dm.prune(
        dry=not args.apply,
        empty_sessions=args.empty_sessions,
        migrated_shelves=args.migrated_shelves,
    )
    for path in paths:
        print(path)
    if args.apply:
        print(f"removed {len(paths)} path(s)")
    else:
        print(f"dry run: {len(paths)} path(s) would be removed; nothing was (use --apply)")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    if not os.path.exists(args.folder):
        raise FileNotFoundError(f"no such folder: {args.folder}")
    dm = _open(args.datadir, args.unsafe, must_exist=False)
    summary = dm.import_recordings(args.folder)
    if not (summary.imported or summary.unchanged or summary.failed):
        raise ValueError(
            f"no recordings under {args.folder} ({len(summary.skipped)} "
            "other files); nothing was written"
        )
    print(summary)
    for path, error in summary.failed.items():
        print(f"  failed: {path}: {error}")
    return 1 if summary.failed else 0


def cmd_index(args: argparse.Namespace) -> int:
    dm = _open(args.datadir, args.unsafe)
    print(dm.build_index(hash_values=args.hash))
    if args.parquet:
        for path in dm.export_index(args.parquet):
            print(f"wrote {path}")
    return 0


def cmd_sweeps(args: argparse.Namespace) -> int:
    from .tasks import task_sweeps

    frame = task_sweeps(_open(args.datadir, args.unsafe))
    if frame.empty:
        print(f"no sweeps in {args.datadir}")
        return 0
    rows = [
        [rec["name"], rec["done"], rec["failed"], rec["last_run"].strftime("%Y-%m-%d %H:%M:%S")]
        for rec in frame.to_dict("records")
    ]
    print(_table(["sweep", "done", "failed", "last run (UTC)"], rows))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from .tasks import task_table

    frame = task_table(_open(args.datadir, args.unsafe), args.sweep, failures=args.failures)
    if args.parquet:
        from .index.tables import write_parquet

        write_parquet(frame, args.parquet)
        print(f"wrote {args.parquet}: {len(frame)} rows")
    elif args.csv == "-":
        frame.to_csv(sys.stdout, index=False)
    elif args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}: {len(frame)} rows")
    else:
        rows = [[_cell(v) for v in rec.values()] for rec in frame.to_dict("records")]
        print(_table(list(frame.columns), rows))
    return 0


def _cell(value: Any) -> str:
    """A table cell short enough to read: numbers to 6 digits, objects in brief.

    A missing field (or NaN, or None) is an empty cell, as in the CSV.
    """
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return _preview(value)


def cmd_info(args: argparse.Namespace) -> int:
    from .recordings import load_recording

    # Any other folder is a recording that is not there: load_recording says so.
    if os.path.isdir(args.file) and os.path.normpath(args.file).endswith(".data"):
        return _info_directory(args.file, args.unsafe, args.provenance)
    if args.provenance:
        print(f"Error: --provenance describes a data directory, not {args.file}", file=sys.stderr)
        return 2
    recordings = load_recording(args.file)
    for n, rec in enumerate(recordings):
        if len(recordings) > 1:
            print(f"block {n}" + (f": {rec.label}" if rec.label else ""))
        elif rec.label:
            print(f"label: {rec.label}")
        print(f"layout: {rec.layout}")
        print(f"rows: {rec.shape[0]}, columns: {rec.shape[1]}")
        units = ["" if u is None else u for u in rec.units]
        print(_table(["column", "unit"], [list(cu) for cu in zip(rec.columns, units)]))
        if rec.header:
            print("header:")
            for key, value in rec.header.items():
                print(f"  {key} = {value}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .recordings import load_recording
    from .recordings.plot import figure_of, save_picture

    out = args.out or os.path.splitext(os.path.basename(args.file))[0] + ".png"
    if os.path.exists(out) and os.path.samefile(out, args.file):
        raise ValueError(f"{out} is the recording itself: name the picture with -o")
    columns = [int(c) if c.isdigit() else c for c in args.columns or ()]
    recordings = load_recording(args.file)
    save_picture(figure_of(recordings, columns or None), out)
    print(f"wrote {out}: {_count(len(recordings), 'recording')}")
    return 0


def _info_directory(datadir: str, unsafe: bool, provenance: bool) -> int:
    """Describe a data directory: sessions, keys, size, and the code that wrote them."""
    from .provenance import code_versions

    dm = _open(datadir, unsafe)
    frame = dm.sessions()
    rows = frame.to_dict("records")
    versions = code_versions(rows)
    print(f"data directory: {dm.basepath}")
    print(f"sessions: {len(rows)}")
    print(f"keys: {len(dm.keys())}")
    print(f"size: {_size(frame['size'].sum() if rows else 0)}")
    if rows and "created" in frame:
        first, last = frame["created"].min(), frame["created"].max()
        print(f"written: {first:%Y-%m-%d %H:%M:%S} to {last:%Y-%m-%d %H:%M:%S} (UTC)")
    dirty = [names for version, names in versions if version["git_dirty"]]
    print(
        f"code versions: {len(versions)}, {len(dirty)} with uncommitted changes"
        f" ({_count(sum(map(len, dirty)), 'session')})"
    )
    if provenance:
        for n, (version, names) in enumerate(versions, 1):
            print(f"\ncode version {n}: {_count(len(names), 'session')}")
            for label, text in _code_version(dm.basepath, version):
                print(f"  {label:<12} {text}")
            print("  sessions:")
            for name in names:
                print(f"    {name}")
    return 0


def _code_version(basepath: str, version: dict[str, Any]) -> list[tuple[str, str]]:
    """The lines that describe one code version (see :func:`provenance.code_versions`)."""
    from ._format import stored_path

    commit, dirty, status = version["git_commit"], version["git_dirty"], version["git_status"]
    sha256 = version["git_diff_sha256"]
    if dirty is None:
        changes = f"unknown ({status or 'not recorded'})"
    elif not dirty:
        changes = "none"
    elif sha256 is None:
        changes = "yes; no diff recorded"
    else:
        changes = f"yes; diff sha256 {sha256}, {_size(int(version['git_diff_size']))}"
    lines = [("git commit", commit or "unknown"), ("uncommitted", changes)]
    if sha256 is not None:
        where = stored_path(basepath, sha256) if version["git_diff_stored"] else None
        lines.append(("diff file", where or "none: the diff was too large to store"))
    lines.append(("datamanager", version["datamanager_version"] or "unknown"))
    lines.append(("python", version["python"] or "unknown"))
    return lines


# -- parser ----------------------------------------------------------------


def _command(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str, example: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    # Also accepted after the command; SUPPRESS keeps a value given before it.
    parser.add_argument(
        "--unsafe",
        action="store_true",
        default=argparse.SUPPRESS,
        help="trust the data directory: unpickle any stored object",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``datamanager`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="datamanager",
        description="Inspect, check and export datamanager data directories (<name>.data).",
        epilog="example:\n  datamanager ls results.data\n\n"
        "Data directories are read in safe mode: stored pickles that are not plain\n"
        "values or numpy arrays are refused unless --unsafe is given.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--unsafe",
        action="store_true",
        help="trust the data directory: unpickle any stored object",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _command(sub, "ls", cmd_ls, "list the sessions as a table", "datamanager ls sweep.data")
    p.add_argument("datadir", metavar="DATADIR")

    p = _command(
        sub,
        "keys",
        cmd_keys,
        "list the keys (optionally those with a prefix)",
        "datamanager keys sweep.data rate",
    )
    p.add_argument("datadir", metavar="DATADIR")
    p.add_argument("prefix", metavar="PREFIX", nargs="?", default="")

    p = _command(
        sub,
        "show",
        cmd_show,
        "summarise one key across sessions (type, shape, count)",
        "datamanager show sweep.data rate",
    )
    p.add_argument("datadir", metavar="DATADIR")
    p.add_argument("key", metavar="KEY")

    p = _command(
        sub,
        "export",
        cmd_export,
        "export to one HDF5 file (written atomically)",
        "datamanager export sweep.data sweep.h5 --merged --match rate",
    )
    p.add_argument("datadir", metavar="DATADIR")
    p.add_argument("out", metavar="OUT.h5")
    p.add_argument("--match", metavar="P", help="only keys starting with P")
    p.add_argument("--merged", action="store_true", help="also write /merged/<key>")
    p.add_argument("--compression", choices=["gzip", "lzf"], help="compress datasets")
    p.add_argument("--force", action="store_true", help="replace OUT.h5 if it exists")
    p.add_argument(
        "--on-unsupported",
        choices=["error", "skip", "pickle"],
        default="error",
        help="what to do with values HDF5 cannot hold (default: error)",
    )
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")

    p = _command(
        sub,
        "verify",
        cmd_verify,
        "check every session; report each problem with its file (exit 1 if any)",
        "datamanager verify sweep.data",
    )
    p.add_argument("datadir", metavar="DATADIR")

    p = _command(
        sub,
        "prune",
        cmd_prune,
        "list (or with --apply, remove) leftover files that hold no value",
        "datamanager prune sweep.data --apply",
    )
    p.add_argument("datadir", metavar="DATADIR")
    p.add_argument("--apply", action="store_true", help="remove them (default: only list them)")
    p.add_argument(
        "--empty-sessions",
        action="store_true",
        help="also sessions without keys that no process of this machine holds open",
    )
    p.add_argument(
        "--migrated-shelves",
        action="store_true",
        help="also legacy shelves that migrate() copied and verified",
    )

    p = _command(
        sub,
        "import",
        cmd_import,
        "import the .dat/.atf recordings under FOLDER into one session",
        "datamanager import recordings/ cells.data",
    )
    p.add_argument("folder", metavar="FOLDER")
    p.add_argument("datadir", metavar="DATADIR")

    p = _command(
        sub,
        "nwb",
        cmd_nwb,
        "write recording files, or the recordings of a data directory, as one NWB file",
        "datamanager nwb cell1.atf cell2.atf -o cells.nwb",
    )
    p.add_argument(
        "sources",
        metavar="SOURCE",
        nargs="+",
        help="recording files (.atf, NEURON .dat), or a data directory then key prefixes",
    )
    p.add_argument("-o", "--out", metavar="OUT.nwb", required=True)
    p.add_argument(
        "--start-time",
        metavar="ISO",
        help="session start (ISO 8601, e.g. 2024-05-02T10:31:00+02:00) where the files say none",
    )
    p.add_argument("--description", metavar="TEXT", help="the session description")
    p.add_argument(
        "--time-unit", metavar="UNIT", help="time unit where a file names none (NEURON files: ms)"
    )
    p.add_argument(
        "--unit",
        metavar="COLUMN=UNIT",
        action="append",
        default=[],
        help="unit of a column whose file names none (repeatable), e.g. 'v(.5)=mV'",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    p = _command(
        sub,
        "index",
        cmd_index,
        "index the data directory (or update its index) so that reading it is fast",
        "datamanager index sweep.data",
    )
    p.add_argument("datadir", metavar="DATADIR")
    p.add_argument("--hash", action="store_true", help="record a sha256 of every stored value")
    p.add_argument(
        "--parquet", metavar="DIR", help="also write sessions.parquet and items.parquet to DIR"
    )

    p = _command(
        sub,
        "sweeps",
        cmd_sweeps,
        "list the sweeps of run_tasks: items done, items failed, last run",
        "datamanager sweeps sweep.data",
    )
    p.add_argument("datadir", metavar="DATADIR")

    p = _command(
        sub,
        "table",
        cmd_table,
        "one sweep as a table: a row per item, its parameters and its result",
        "datamanager table sweep.data firing_rate --csv rates.csv",
    )
    p.add_argument("datadir", metavar="DATADIR")
    p.add_argument("sweep", metavar="SWEEP")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", metavar="OUT", help="write CSV to OUT ('-': standard output)")
    out.add_argument("--parquet", metavar="OUT", help="write Parquet to OUT (needs pyarrow)")
    p.add_argument(
        "--failures", action="store_true", help="also the failed items, with an error column"
    )

    p = _command(
        sub,
        "info",
        cmd_info,
        "describe a data directory (sessions, keys, size, code versions) or a recording"
        " file (layout, columns, units, rows, header records)",
        "datamanager info sweep.data --provenance",
    )
    p.add_argument("file", metavar="PATH", help="a data directory or a recording file")
    p.add_argument(
        "--provenance",
        action="store_true",
        help="group the sessions of a data directory by the code that wrote them",
    )

    p = _command(
        sub,
        "plot",
        cmd_plot,
        "draw a recording file's traces against time into a PNG picture",
        "datamanager plot cell1.atf -o cell1.png --columns 'Trace #1'",
    )
    p.add_argument("file", metavar="FILE", help="a recording file (.atf or NEURON .dat)")
    p.add_argument(
        "-o", "--out", metavar="OUT.png", help="the picture (default: FILE's stem + .png, here)"
    )
    p.add_argument(
        "--columns",
        nargs="+",
        metavar="C",
        help="only these traces, by name, title or index (default: all but time)",
    )
    return parser


def _print_warning(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
    """Show a warning as one line: a source file and line mean nothing to a user here."""
    kind = "" if issubclass(category, DataManagerWarning) else f"{category.__name__}: "
    print(f"warning: {kind}{message}", file=sys.stderr)


def _message(exc: BaseException) -> str:
    """The error, with its hint in the command line's terms (the library names arguments)."""
    if isinstance(exc, UnsafeValueError):
        return exc.explain("rerun with --unsafe to trust this data")
    if isinstance(exc, UnsupportedValueError):
        return exc.explain("use --on-unsupported skip or pickle")
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0, 1 error, 2 usage, 130 Ctrl-C)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a usage error; the whole help says more than "COMMAND is required"
        parser.print_help(sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error
        return exc.code if isinstance(exc.code, int) else 2
    # Session names are file names, which may hold bytes undecodable as UTF-8
    # (kept as surrogates by os.listdir): print them as those bytes, as ls does,
    # instead of failing on them.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    with warnings.catch_warnings():
        # Every skipped file is news to the user, not only the first of a kind.
        warnings.simplefilter("always", DataManagerWarning)
        warnings.showwarning = _print_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except BrokenPipeError:
        # Output piped into `head`: stop quietly, as other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except KeyError as exc:
        print(f"Error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
    except (DataManagerError, OSError, ValueError, TypeError, ImportError) as exc:
        print(f"Error: {_message(exc)}", file=sys.stderr)
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT: what shells report for a command stopped by Ctrl-C
    return 1
