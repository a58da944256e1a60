"""The exception umx raises for problems a user can fix (bad files, bad options, missing models)."""


class UmxError(Exception):
    """A user error: its message is one sentence, shown by the CLI without a traceback."""
