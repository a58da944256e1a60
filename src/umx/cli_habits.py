"""What newcomers type, out of habit or from other separators (demucs, spleeter), and what umx
means by it: stem words given as inputs or targets, other tools' options, and options of
another umx command. Each is answered with one line that says what to type instead."""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from umx.defaults import ACCOMPANIMENT_WORDS, SOURCES
from umx.errors import UmxError

"""The targets of the music models, which the stem words below ask for."""
SINGULAR = {"vocals": "vocal", "drums": "drum"}
A_CAPPELLA = ("acapella", "acappella", "a cappella", "a-cappella", "a_cappella", "cappella")
"""Ways to write a cappella, the vocals alone (`cappella`: of `umx song.mp3 a cappella`)."""


def _rest_words(target: str) -> list[str]:
    """Words for the mixture without `target` (`no_drums`, `drumless`)."""
    one = SINGULAR.get(target, target)
    return [f"no_{target}", f"no-{target}", f"no_{one}", f"without_{target}", f"{one}less"]


STEM_WORDS = {
    **{target: f"--targets {target}" for target in SOURCES},
    **dict.fromkeys(ACCOMPANIMENT_WORDS, "--two-stems vocals"),
    **dict.fromkeys(A_CAPPELLA, "--targets vocals"),
    **{word: f"--two-stems {t}" for t in SOURCES for word in _rest_words(t)},
}
"""Words a newcomer may give after a song or as a target, meaning stems, and the option that
asks for them."""
OTHER_TOOLS_OPTIONS = {
    "-o": "--outdir",
    "--out": "--outdir",
    "-n": "--model",
    "--name": "--model",
    "-d": "--device",
    "--mp3": "--ext mp3",
    "--flac": "--ext flac",
    "--float32": "--subtype FLOAT",
    "--int24": "--subtype PCM_24",
    "--clip-mode": "--clip",
    "--output": "--outdir",
    "--cpu": "--device cpu",
    "--gpu": "--device cuda",
    "--cuda": "--device cuda",
    "--stem": "--targets",
    "--stems": "--targets",
    "-j": "--jobs",
}
"""Options of other separators (demucs, spleeter) and the umx options that do what they do."""
UMX_OPTIONS = {"--version": "umx --version", "--list-models": "umx --list-models"}
"""Options of `umx` itself (`--list-models`: of `umx [separate]`), meant when given to another
command (`umx batch --list-models`)."""
OTHER_COMMAND_OPTIONS = {
    **dict.fromkeys(("--stdout", "--block", "--realtime", "--rate", "--channels"), "stream"),
    **dict.fromkeys(("--jobs", "--threads", "--ray", "--extensions", "--retry-failed"), "batch"),
}
"""Options of one umx command that a newcomer gives to another (`umx song.mp3 --stdout`), and
the command they belong to."""
BITRATE_OPTIONS = ("--mp3-bitrate", "--bitrate", "--mp3-preset", "-b")
NO_BITRATE = (
    "umx has no bitrate option: --ext mp3 writes variable-bitrate mp3; for a set bitrate write "
    "wav and encode it, e.g. ffmpeg -i separated/song/vocals.wav -b:a 320k vocals.mp3"
)
SPLEETER_STEMS = re.compile(r"spleeter:(\d)stems.*")
"""Spleeter's `-p spleeter:2stems` (its 2, 4 or 5 stems)."""
CLOSE = 0.75
"""How alike (difflib's ratio, without the dashes) an unknown option and one of the command's
must be for one to be taken for the other: `taregts` and `targets` are; `cpu` and `clip`,
`shifts` and `softmask` (0.57) are not."""


def stem_option(word: str) -> str | None:
    """The option that asks for the stems `word` names (`Vocals`, `drumless`), or None."""
    lower = word.lower()
    for key in (word, lower, lower + "s", lower.replace("-", "_")):
        if key in STEM_WORDS:
            return STEM_WORDS[key]
    return None


def check_stem_words(
    targets: Sequence[str] | None, two_stems: str | None, known: Sequence[str]
) -> None:
    """Refuse, in one line with what to write instead, a `--targets` or `--two-stems` word that
    is none of the `known` targets of the model but says which it means: `all`, a comma list,
    a singular or capitalised name, a cappella, the mixture without one (`no_drums`). The rest
    of the mixture (`karaoke`) is answered where the model's targets are checked."""
    given = [("--two-stems", [two_stems])] if two_stems is not None else []
    for option, words in [*([("--targets", list(targets))] if targets else []), *given]:
        for word in words:
            if word in known or word in ACCOMPANIMENT_WORDS:
                continue
            problem = f"{option} {word}: the model's targets are {', '.join(known)}"
            instead = _instead(option, word, words, known)
            if instead is not None:
                raise UmxError(f"{problem}; {instead}")


def _instead(option: str, word: str, words: list[str], known: Sequence[str]) -> str | None:
    """What to write for `word`, one of `words` given to `option`, or None when not clear."""
    if word.lower() == "all":
        return f"leave out {option}: all of them are separated by default"
    if "," in word and option == "--targets":
        names = [name for given in words for name in given.replace(",", " ").split()]
        return f"write the names apart, with spaces: --targets {' '.join(names)}"
    meant = stem_option(word)
    target = meant.split()[-1] if meant else None
    if meant is not None and target in known and word.lower() not in (target, target[:-1]):
        if meant.startswith("--targets"):
            return f"for the vocals alone write {meant}"
        return (
            f"for the mix without the {target} write {meant} (it writes {target} and no_{target})"
        )
    close = [t for t in known if t.lower() in (word.lower(), word.lower() + "s")]
    close = close or difflib.get_close_matches(word.lower(), known, n=1, cutoff=CLOSE)
    if not close:
        return None
    fixed = " ".join(close[0] if given == word else given for given in words)
    return f"did you mean {option} {fixed}?"


def meant_option(
    unknown: Sequence[str], options: Sequence[str], command: str, args: Sequence[str]
) -> str:
    """`; did you mean --outdir?` for the first unknown option that is close to one of the
    command's `options` (`--output`, `--taregts`), does what it does in another tool (`-o out`:
    `--outdir out`), or is another umx command's (`--stdout`: `umx stream ...`, with the user's
    `args`); what to do for a second model after --model; else nothing."""
    meant = {**UMX_OPTIONS, **{option: option for option in options}}
    bare = {option.lstrip("-"): option for option in meant}
    for index, given in enumerate(unknown):
        if not given.startswith("-"):
            models = given_models(args)
            if models and list(args[list(args).index(models[-1]) + 1 :][:1]) == [given]:
                return f"; {two_models([*models, given], command)}"
            continue
        word, _, value = given.partition("=")
        following = unknown[index + 1] if index + 1 < len(unknown) else ""
        value = value or (following if not following.startswith("-") else "")
        special = _other_tool(word, value)
        if special is not None:
            return f"; {special}"
        ours = OTHER_TOOLS_OPTIONS.get(word, word)
        if ours.split()[0] in options and ours != word:
            return f"; did you mean {ours}{f' {value}' if value and ' ' not in ours else ''}?"
        sibling = OTHER_COMMAND_OPTIONS.get(ours)
        if sibling is not None and sibling != command:
            return (
                f"; {ours} is an option of umx {sibling}: {_rewritten(args, sibling, word, ours)}"
            )
        close = difflib.get_close_matches(word.lstrip("-"), bare, n=1, cutoff=CLOSE)
        if word in meant or close:
            return f"; did you mean {meant[word if word in meant else bare[close[0]]]}?"
    return ""


def _rewritten(args: Sequence[str], command: str, word: str, ours: str) -> str:
    """The user's `args` as a run of umx `command`, with option `word` written `ours`."""
    rest = list(args[1:] if args[:1] and not args[0].startswith("-") else args)
    rest = [ours + arg[len(word) :] if arg.split("=")[0] == word else arg for arg in rest]
    return f"umx {command} {shlex.join(rest)}"


def _other_tool(word: str, value: str) -> str | None:
    """What umx does instead of spleeter's `-p spleeter:2stems` or a bitrate option."""
    if word in BITRATE_OPTIONS:
        return NO_BITRATE
    stems = SPLEETER_STEMS.fullmatch(value)
    if word not in ("-p", "--params_filename") or stems is None:
        return None
    if stems.group(1) == "2":
        return f"{word} {value} is spleeter's: for the vocals and the rest write --two-stems vocals"
    return f"{word} {value} is spleeter's: leave it out, umx writes {', '.join(SOURCES)} by default"


def given_models(args: Sequence[str]) -> list[str]:
    """The values of every `--model` in `args`, in order."""
    return [
        arg.partition("=")[2] if "=" in arg else args[i + 1] if i + 1 < len(args) else ""
        for i, arg in enumerate(args)
        if arg == "--model" or arg.startswith("--model=")
    ]


def two_models(models: Sequence[str], command: str) -> str:
    """What to do instead of giving umx `command` several `models`."""
    given = f"{len(models)} models given ({', '.join(models)})"
    first = models[0]
    if command == "evaluate":
        dirs = [f"ev/{Path(model).name}" for model in models]
        return (
            f"{given}; umx evaluate scores one: score each into its own --evaldir (--model "
            f"{first} --evaldir {dirs[0]}), then umx evaluate --compare {' '.join(dirs)} "
            "--evaldir ev/compare"
        )
    return (
        f"{given}; umx {command} separates with one: run it once per model, each with its own "
        f"--outdir (--model {first} --outdir separated/{Path(first).name})"
    )
