"""How umx shows text that came from files and users (`umx batch`, job records): printable,
on one line, and short enough to read (a 100 kB line of a list file is not echoed whole), with
plurals right."""

from __future__ import annotations

from umx.errors import display_path

SHOWN_CHARACTERS = 120
"""The longest text from a file or a user that a message shows whole."""


def shown(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """`text` as printable one-line text (controls escaped as `umx separate` shows paths),
    cut after `limit` characters, saying how long it was.

    Returns:
        the text to put in a message.
    """
    if len(text) <= limit:
        return display_path(text)
    return f"{display_path(text[:limit])}... ({len(text)} characters)"


def plural(count: int, word: str) -> str:
    """`count` and `word`, with an s unless the count is 1: "1 file", "2 files"."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def duration(seconds: float) -> str:
    """A duration for people, in the unit that reads best: `0.4 s`, `45 s`, `12 min`, `3.5 h`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
