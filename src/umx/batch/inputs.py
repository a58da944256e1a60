"""The inputs of a batch job: files, folders searched recursively by extension, glob patterns,
and list files (one path per line, CSV or JSON Lines with per-file options)."""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from umx.audio import display_path
from umx.defaults import AUDIO_EXTENSIONS
from umx.errors import UmxError, check_number
from umx.folders import within
from umx.messages import shown

logger = logging.getLogger("umx")

GLOB_CHARACTERS = frozenset("*?[")
"""Those that make an argument a glob pattern (unless it is an existing path)."""
LIST_FIELDS = ("path", "start", "duration")
"""The columns of a CSV list file, and the keys of a JSON Lines one: `path` is required."""
LIST_FILE_LIMIT = 256 << 20
"""The largest list file read, in bytes."""
PATH_LIMIT = 4096
"""The longest path a list file may name, in bytes (Linux's PATH_MAX)."""


@dataclass(frozen=True)
class BatchInput:
    """One input of a job: an absolute path and the excerpt of it to separate.

    Attributes:
        path: the file, absolute (as given, not resolved through links), so that the job can be
            resumed from another folder or finished on other machines that mount the same path.
        start: start of the excerpt in seconds.
        duration: its length in seconds; to the end if None.
    """

    path: str
    start: float = 0.0
    duration: float | None = None

    @property
    def key(self) -> str:
        """What identifies the input in the manifest: its path, and its excerpt if any."""
        if self.start == 0.0 and self.duration is None:
            return self.path
        duration = "" if self.duration is None else f"{self.duration:g}"
        return f"{self.path}#start={self.start:g},duration={duration}"


def collect_inputs(
    arguments: Sequence[str],
    *,
    lists: Sequence[str] = (),
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    exclude: Sequence[str | os.PathLike] | Mapping[str | os.PathLike, str] = (),
) -> list[BatchInput]:
    """The inputs named by files, folders and glob patterns, and by list files.

    A folder is searched recursively for files with one of `extensions`, skipping hidden files
    and folders and the `exclude` folders (the output folder and the job directory, so that a
    job never takes its own stems for inputs). An argument with `*`, `?` or `[` that is not an
    existing path is a glob pattern (`**` crosses folders). Any other argument is a file; one
    that does not exist is refused (a mistyped folder), one that cannot be read is kept: the
    job records it as failed and goes on. Files named by list files are kept even when missing.

    Args:
        arguments: files, folders and patterns, in order.
        lists: list files (see `read_list`), read after the arguments.
        extensions: the extensions searched for in folders, without the dot.
        exclude: folders never searched, each with the option that names it (`--outdir`,
            `--job`, distill's `--work` and `--teacher-stems`) for the messages; a sequence
            of folders is of `--outdir`.

    Returns:
        the inputs in order, each once (the first occurrence is kept).

    Raises:
        UmxError: an argument does not exist, a folder holds no audio file or is inside an
            `exclude` folder, a pattern matches nothing (or only files in those folders), a
            list file is unreadable or malformed, or no input is given at all.
    """
    wanted = {"." + extension.lower().lstrip(".") for extension in extensions}
    if not isinstance(exclude, Mapping):
        exclude = dict.fromkeys(exclude, "--outdir")
    options = {os.path.abspath(folder): option for folder, option in exclude.items()}
    skipped = set(options)
    found: list[BatchInput] = []
    for argument in arguments:
        if os.path.isdir(argument) and _inside(os.path.abspath(argument), skipped):
            option = _option_of(os.path.abspath(argument), options)
            raise UmxError(
                f"the folder {shown(argument)} is {_WHAT[option]} ({option}), or inside it: "
                f"give {_AN[option]} {option} outside the songs"
            )
        if os.path.isdir(argument):
            files = sorted(_search(argument, wanted, skipped))
            if not files:
                raise UmxError(_no_songs(argument, wanted, skipped))
            found.extend(BatchInput(path) for path in files)
        elif GLOB_CHARACTERS & set(argument) and not os.path.lexists(argument):
            matches = [p for p in glob.glob(argument, recursive=True) if os.path.isfile(p)]
            files = sorted(
                path for path in map(os.path.abspath, matches) if not _inside(path, skipped)
            )
            if matches and not files:
                option = _option_of(os.path.abspath(matches[0]), options)
                raise UmxError(
                    f"the pattern {shown(argument)} matches only files {_WHERE[option]} "
                    f"({option}): give {_AN[option]} {option} outside the songs"
                )
            if not files:
                raise UmxError(f"the pattern {shown(argument)} matches no file")
            found.extend(BatchInput(path) for path in files)
        elif not os.path.lexists(argument):
            raise UmxError(
                f"the input {shown(argument)} does not exist: name existing files or folders, "
                "or patterns (quoted)"
            )
        else:
            found.append(BatchInput(os.path.abspath(argument)))
    for name in lists:
        found.extend(read_list(name))
    if not found:
        raise UmxError("no inputs given: name files, folders, patterns or --list FILE")
    unique = {item.key: item for item in reversed(found)}
    return [unique[key] for key in dict.fromkeys(item.key for item in found)]


def pattern_base(argument: str) -> str:
    """The folder a glob pattern searches (its parts before the first with `*`, `?` or `[`, or
    `.`); any other argument (an existing path, or one without those) as it is."""
    if not GLOB_CHARACTERS & set(argument) or os.path.lexists(argument):
        return argument
    parts = Path(argument).parts
    fixed = next(i for i, part in enumerate(parts) if GLOB_CHARACTERS & set(part))
    return str(Path(*parts[:fixed])) if fixed else os.curdir


def as_given(path: str, arguments: Sequence[str]) -> str:
    """An input's absolute `path` as its user would write it: from the first of `arguments`
    (files, folders, patterns, a list file's folder; as typed) that holds it, so that a
    relative argument's inputs stay relative; as it is when none holds it."""
    for argument in arguments:
        base = pattern_base(argument)
        folder = os.path.abspath(base)
        if path == folder:
            return argument
        if within(path, folder):
            rest = os.path.relpath(path, folder)
            return rest if base == os.curdir else os.path.join(base, rest)
    return path


_WHAT = {
    "--outdir": "where the job writes its stems",
    "--job": "the job directory",
    "--work": "the work folder",  # of umx distill, which runs a job there
    "--teacher-stems": "the teacher's stems folder",  # of umx distill
}
"""What the folders an input may not be in are, by the option that names them."""
_WHERE = {
    "--outdir": "where the job writes its stems",
    "--job": "in the job directory",
    "--work": "in the work folder",
    "--teacher-stems": "in the teacher's stems folder",
}
_AN = {"--outdir": "an", "--job": "a", "--work": "a", "--teacher-stems": "a"}


def _option_of(path: str, options: Mapping[str, str]) -> str:
    """The option naming the first excluded folder that holds `path`."""
    return next(option for folder, option in options.items() if within(path, folder))


def _inside(path: str, folders: Iterable[str]) -> bool:
    return any(within(path, folder) for folder in folders)


def holds_songs(folder: str, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> bool:
    """Whether a folder search (see `collect_inputs`) finds a file in `folder`."""
    wanted = {"." + extension.lower().lstrip(".") for extension in extensions}
    return any(True for _ in _search(folder, wanted, set(), warn=False))


def _no_songs(folder: str, wanted: set[str], skipped: set[str]) -> str:
    """Why a folder gives no input: the extensions looked for, and those its files have."""
    listed = " ".join(sorted(wanted, key=lambda name: (_DEFAULT_ORDER.get(name, 99), name)))
    found = Counter(
        Path(path).suffix.lower() for path in _search(folder, None, skipped, warn=False)
    )
    named = [suffix for suffix, _ in found.most_common() if suffix][:4]
    if named:
        more = " and others" if len(found) > len(named) else ""
        held = f"; it holds {shown(' '.join(named), 40)} files{more}"
    else:
        held = "; its files have no extension" if found else "; it holds no files"
    return f"the folder {shown(folder)} holds no {listed} file (--extensions){held}"


_DEFAULT_ORDER = {f".{extension}": i for i, extension in enumerate(AUDIO_EXTENSIONS)}
"""The default extensions listed in their order (others after them, sorted)."""


def _search(
    folder: str, wanted: set[str] | None, skipped: set[str], *, warn: bool = True
) -> Iterable[str]:
    """The files under `folder` with a wanted extension, hidden entries skipped; links to
    folders are not followed (one could lead back up), but said (when `warn`). `wanted`
    None: every file."""
    for root, dirs, files in os.walk(os.path.abspath(folder)):
        dirs[:] = [
            d for d in dirs if not d.startswith(".") and os.path.join(root, d) not in skipped
        ]
        links = filter(os.path.islink, (os.path.join(root, d) for d in dirs)) if warn else ()
        for link in links:
            logger.warning(
                "skipping %s, a link to a folder: name it as an input to separate its songs",
                shown(display_path(link)),
            )
        if _inside(root, skipped):
            continue
        for name in sorted(files):
            if not name.startswith(".") and (wanted is None or Path(name).suffix.lower() in wanted):
                yield os.path.join(root, name)


def read_list(name: str | os.PathLike) -> list[BatchInput]:
    """The inputs of a list file; relative paths are relative to the list's folder.

    The format follows the extension: `.csv` is CSV with a header row naming the columns
    `path` (required), `start` and `duration` (seconds; empty for the defaults); `.jsonl` (or
    `.ndjson`) holds one JSON object per line with the same keys; anything else holds one path
    per line (blank lines and lines starting with `#` are skipped).

    Raises:
        UmxError: the file cannot be read, or a line is malformed (the message gives its number).
    """
    path = Path(name)
    listed = display_path(path)
    try:
        if path.stat().st_size > LIST_FILE_LIMIT:
            raise UmxError(f"the list {listed} is larger than {LIST_FILE_LIMIT} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise UmxError(f"cannot read the list {listed} ({reason})") from None
    if (nul := text.find("\0")) >= 0:
        raise UmxError(
            f"the list {listed} holds a NUL byte on line {text.count(chr(10), 0, nul) + 1}: is it "
            "a list of paths (one per line, CSV or JSON Lines)?"
        )
    base = path.parent
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(text, listed)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(text, listed)
    else:
        rows = [
            (number, {"path": line.strip()})
            for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    return [_list_input(row, base, f"{listed} line {number}") for number, row in rows]


def _csv_rows(text: str, listed: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(text.splitlines())
    fields = reader.fieldnames or []
    if "path" not in fields:
        raise UmxError(f"the CSV list {listed} needs a header row with a path column")
    unknown = [field for field in fields if field not in LIST_FIELDS]
    if unknown:
        raise UmxError(
            f"the CSV list {listed} has unknown columns {_names(unknown)}; "
            f"use {', '.join(LIST_FIELDS)}"
        )
    try:
        return [
            (reader.line_num, {k: v for k, v in row.items() if v not in ("", None)})
            for row in reader
        ]
    except csv.Error as error:
        raise UmxError(f"the CSV list {listed} is malformed ({shown(str(error))})") from None


def _jsonl_rows(text: str, listed: str) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as error:
            raise UmxError(f"{listed} line {number} is not JSON ({error})") from None
        if not isinstance(row, dict):
            raise UmxError(f"{listed} line {number} must be a JSON object with a path")
        rows.append((number, row))
    return rows


def _list_input(row: dict, base: Path, where: str) -> BatchInput:
    """One input of a list file, its options checked."""
    unknown = [key for key in row if key not in LIST_FIELDS]
    if unknown:
        fields = ", ".join(LIST_FIELDS)
        raise UmxError(f"{where} has unknown fields {_names(unknown)}; use {fields}")
    path = row.get("path")
    if not isinstance(path, str) or not path:
        raise UmxError(f"{where} needs a path")
    if "\0" in path:
        raise UmxError(f"{where}: the path {shown(path)} holds a NUL character")
    if len(os.fsencode(path)) > PATH_LIMIT:
        raise UmxError(f"{where}: the path {shown(path)} is longer than any path can be")
    start = _number(row.get("start", 0.0), f"{where}: start")
    check_number(f"{where}: start", start, minimum=0)
    duration = row.get("duration")
    if duration is not None:
        duration = _number(duration, f"{where}: duration")
        check_number(f"{where}: duration", duration, above=0)
    return BatchInput(
        os.path.abspath(base / path), float(start), None if duration is None else float(duration)
    )


def _number(value: object, name: str) -> object:
    """A CSV field's text as a float; other numbers are left for `check_number` to judge."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise UmxError(f"{name} must be a number, not {shown(repr(value))}") from None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise UmxError(f"{name} must be a number, not {shown(json.dumps(value))}")
    return value


def _names(names: Iterable[str]) -> str:
    """Names from a list file, quoted and shown readably."""
    return ", ".join(shown(repr(name), 40) for name in names)
