"""Resuming an evaluation: what made a track's scores, recorded in its museval JSON, and the
check that a resumed run makes them the same way before it reuses them."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from umx.errors import UmxError, display_path, os_error_line
from umx.evaluate.methods import Method, Settings
from umx.messages import plural, shown

SETTINGS = "settings"
"""The field of a track's JSON that records how its scores were made (museval ignores it), as
`run_settings` gives it; the method's name is in `method`."""
SHOWN_VALUE = 60
"""The longest recorded value a message shows whole."""


def run_settings(method: Method, *, win: float, hop: float, metrics: str) -> Settings:
    """What makes a track's scores besides the method's name: the method's own settings
    (its `settings()`, e.g. `ModelMethod.settings`; none for a callable without it) and
    BSSEval's, as they read back from JSON."""
    describe = getattr(method, "settings", None)
    own = describe() if callable(describe) else {}
    return json.loads(json.dumps({**own, "win": win, "hop": hop, "metrics": metrics}))


def track_settings(method: Method, track: object) -> Settings:
    """What makes one track's estimates besides `run_settings`: the method's
    `track_settings(track)` (e.g. `EstimatesMethod.track_settings`; none without it)."""
    describe = getattr(method, "track_settings", None)
    return json.loads(json.dumps(describe(track))) if callable(describe) else {}


def check_resumable(
    evaldir: str | os.PathLike,
    paths: Sequence[Path],
    name: str | None,
    settings: Settings,
    per_track: Sequence[Settings] | None = None,
) -> None:
    """Refuse to reuse earlier scores that another method (by `name`) or other settings made,
    or that do not record their settings (written by an umx that did not), before any work.

    Args:
        evaldir: the evaluation folder, for the message.
        paths: the JSON files of the tracks that would be skipped.
        name, settings: the method's name and `run_settings` of this run.
        per_track: each path's `track_settings`, recorded with `settings` (None: none).

    Raises:
        UmxError: one line naming `evaldir` and what differs; or a file that cannot be read.
    """
    differing: list[str] = []
    unrecorded = 0
    for index, path in enumerate(paths):
        wanted = settings if per_track is None else {**settings, **per_track[index]}
        data = _read(path)
        recorded = data.get(SETTINGS)
        if "method" in data and data["method"] != name:
            differing.append(_differences({"method": data["method"]}, {"method": name}))
        elif not isinstance(recorded, dict):
            unrecorded += 1
        elif recorded != wanted:
            differing.append(_differences(recorded, wanted))
    advice = "choose another --evaldir, or --force to score them again (replacing those scores)"
    held = f"{display_path(evaldir)} already holds scores of"
    if differing:
        count = plural(len(differing), "track")
        raise UmxError(f"{held} {count} made with other settings ({differing[0]}): {advice}")
    if unrecorded:
        raise UmxError(
            f"{held} {plural(unrecorded, 'track')} that do not record how they were made "
            f"(an earlier umx wrote them), so they cannot be reused safely: {advice}"
        )


def _read(path: Path) -> dict[str, object]:
    """A track's JSON; `{}` for one that is not an object."""
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise UmxError(os_error_line(error)) from None
    except ValueError as error:
        raise UmxError(f"{display_path(path)} is not a museval JSON file ({error})") from None
    return data if isinstance(data, dict) else {}


def _differences(recorded: Settings, wanted: Settings) -> str:
    """The settings that differ, as `name recorded, now wanted; ...`."""
    names = [key for key in {**recorded, **wanted} if recorded.get(key) != wanted.get(key)]
    return "; ".join(
        f"{shown(key)} {_shown(key, recorded.get(key))}, now {_shown(key, wanted.get(key))}"
        for key in names
    )


def _shown(key: str, value: object) -> str:
    """A setting's value in a message: a string as it is (a SHA-256's first 12 digits), `none`,
    or JSON."""
    if value is None:
        return "none"
    if isinstance(value, str):
        return shown(f"{value[:12]}…" if key.endswith("sha256") else value, SHOWN_VALUE)
    return shown(json.dumps(value), SHOWN_VALUE)
