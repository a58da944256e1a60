"""The house rules of `src/umx` hold, and docs/architecture.md's table of rooms says what the code
does: each room's imports, as computed from every module's imports (function-level ones too),
and no room importing one listed above it, except the command-line layer.

Also the size rules of issue 23: no module over 600 lines, no function over 80, argparse only in
`cli.py` and the `*options*` modules.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "umx"
TABLE_ROW = re.compile(r"^\| `.*\|$", re.M)
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str) -> set[str]:
    """The umx modules (and names in them) a module imports, wherever in the module."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {module for module in found if module == "umx" or module.startswith("umx.")}


def rooms() -> list[tuple[list[str], set[str] | None]]:
    """The table's rows: the room's names (`api`, `zoo`, ...) and the names its last column
    lists (None for the command-line layer, which imports every room)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = []
    for line in TABLE_ROW.findall(text):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        names = [name.removesuffix(".py").strip("/") for name in re.findall(r"`([^`]+)`", cells[0])]
        listed = None if "every room" in cells[-1] else set(re.findall(r"[a-z_]+", cells[-1]))
        rows.append((names, listed))
    return rows


ROOMS = rooms()
GROUND_FLOOR = set(ROOMS[0][0])


def room_of(module: str) -> tuple[int, str] | None:
    """The row of the table a module (or a name imported from it) belongs to, and its name."""
    best = None
    for row, (names, _) in enumerate(ROOMS):
        for name in names:
            prefix = f"umx.{name}"
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(name) > len(best[1])
            ):
                best = (row, name)
    return best


def command_line(module: str) -> bool:
    """Whether a module is of the command-line layer: `cli`, `cli_options`, `cli_habits`,
    `cli_run` or a room's `*options*` module (`umx.options` holds typed options, and is a room of
    its own)."""
    package, _, name = module.rpartition(".")
    layer = {"cli", "cli_options", "cli_habits", "cli_run"}
    return name in layer or (package != "umx" and "options" in name)


def test_the_table_has_the_rooms_in_order():
    assert ROOMS[0][0][0] == "errors" and ROOMS[-1][0][0] == "cli"
    assert list(range(len(ROOMS) - 1)) == LISTED  # only the command-line layer says "every room"


def test_every_module_is_in_a_room():
    assert [module for module in MODULES if module != "umx" and room_of(module) is None] == []


LISTED = [row for row, (_, listed) in enumerate(ROOMS) if listed is not None]


@pytest.mark.parametrize("row", LISTED, ids=[ROOMS[row][0][0] for row in LISTED])
def test_each_room_lists_the_rooms_it_imports(row):
    """The last column names every room the row's modules import but the ground floor (which
    every room may use) and the row's own."""
    names, listed = ROOMS[row]
    used = set()
    for module in MODULES:
        if room_of(module) is not None and room_of(module)[0] == row:
            for name in imported(module):
                found = room_of(name)
                if found is not None and found[1] not in GROUND_FLOOR | set(names):
                    used.add(found[1])
    assert listed == used


def test_no_room_imports_one_above_it_but_the_command_line_layer():
    upward = []
    for module in MODULES:
        home = room_of(module)
        if module == "umx" or command_line(module):
            continue
        for name in imported(module):
            found = room_of(name)
            if found is not None and found[0] > home[0]:
                upward.append(f"{module} imports {name}")
    assert upward == []


def test_no_module_is_over_600_lines():
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_no_function_is_over_80_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}")
    assert long == []


def test_argparse_only_in_the_command_line_layer():
    users = [name for name in MODULES if "argparse" in imported_stdlib(name)]
    assert users and all(command_line(name) for name in users), users


def imported_stdlib(name: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.partition(".")[0])
    return found
