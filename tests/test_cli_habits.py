"""What newcomers type out of habit, or from demucs and spleeter, answered with one line that
says what to type instead (`umx.cli_habits`), run through `umx.cli.main`."""

import numpy as np
import pytest
import soundfile as sf

from umx.cli import build_parser, main
from umx.cli_habits import OTHER_COMMAND_OPTIONS

TARGETS = "the model's targets are vocals, drums, bass, other"


@pytest.fixture
def song(tmp_path, monkeypatch):
    """A short stereo song, in the current folder (which nothing else is written to)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UMX_OFFLINE", "1")
    path = tmp_path / "song.wav"
    sf.write(path, np.zeros((1600, 2), dtype=np.float32), 16000)
    return path


def error_of(capsys, *args):
    """The one line `umx ARGS` writes to stderr, and its exit status."""
    try:
        status = main([str(arg) for arg in args])
    except SystemExit as exit:
        status = exit.code
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0], status


@pytest.mark.parametrize(
    ("words", "option"),
    [
        (["acapella"], "--targets vocals"),
        (["drumless"], "--two-stems drums"),
        (["no_vocals"], "--two-stems vocals"),
        (["Vocals"], "--targets vocals"),
        (["drum"], "--targets drums"),
        (["a", "cappella"], "--targets vocals"),
    ],
)
def test_a_stem_word_after_the_song_is_answered_with_its_option(song, capsys, words, option):
    line, status = error_of(capsys, "song.wav", *words)
    word = words[-1]
    more = " (and 1 more input cannot be read)" if len(words) > 1 else ""
    assert line == (
        f"umx: error: {word} does not exist; to ask for stems, write the option: "
        f"umx song.wav {option}{more}"
    )
    assert status == 1
    assert sorted(p.name for p in song.parent.iterdir()) == ["song.wav"]


@pytest.mark.parametrize(
    ("arguments", "answer"),
    [
        (
            ["--two-stems", "no_drums"],
            "--two-stems no_drums: {targets}; for the mix without the drums write --two-stems "
            "drums (it writes drums and no_drums)",
        ),
        (
            ["--targets", "drumless"],
            "--targets drumless: {targets}; for the mix without the drums write --two-stems "
            "drums (it writes drums and no_drums)",
        ),
        (
            ["--two-stems", "acapella"],
            "--two-stems acapella: {targets}; for the vocals alone write --targets vocals",
        ),
        (
            ["--targets", "a cappella"],
            "--targets a cappella: {targets}; for the vocals alone write --targets vocals",
        ),
        (["--targets", "vocal"], "--targets vocal: {targets}; did you mean --targets vocals?"),
        (
            ["--targets", "Vocals", "bass"],
            "--targets Vocals: {targets}; did you mean --targets vocals bass?",
        ),
        (["--two-stems", "drum"], "--two-stems drum: {targets}; did you mean --two-stems drums?"),
        (
            ["--targets", "all"],
            "--targets all: {targets}; leave out --targets: all of them are separated by default",
        ),
        (
            ["--targets", "vocals,drums"],
            "--targets vocals,drums: {targets}; write the names apart, with spaces: --targets "
            "vocals drums",
        ),
        (
            ["--model", "umxse", "--targets", "Speech"],
            "--targets Speech: the model's targets are speech, noise; did you mean --targets "
            "speech?",
        ),
    ],
)
def test_a_target_word_is_answered_before_the_model_loads(song, capsys, arguments, answer):
    line, status = error_of(capsys, "song.wav", *arguments)
    assert line == "umx: error: " + answer.format(targets=TARGETS)
    assert status == 1
    assert sorted(p.name for p in song.parent.iterdir()) == ["song.wav"]


def test_a_target_word_is_answered_in_umx_stream_and_umx_batch_too(song, capsys):
    for command in ("stream", "batch"):
        line, status = error_of(capsys, command, "song.wav", "--two-stems", "drumless")
        assert line.startswith("umx: error: --two-stems drumless: ") and status == 1


@pytest.mark.parametrize(
    ("arguments", "unknown", "answer"),
    [
        (
            ["-p", "spleeter:2stems"],
            "-p spleeter:2stems",
            "-p spleeter:2stems is spleeter's: for the vocals and the rest write --two-stems "
            "vocals",
        ),
        (
            ["-p", "spleeter:4stems"],
            "-p spleeter:4stems",
            "-p spleeter:4stems is spleeter's: leave it out, umx writes vocals, drums, bass, "
            "other by default",
        ),
        (
            ["--mp3-bitrate", "320"],
            "--mp3-bitrate 320",
            "umx has no bitrate option: --ext mp3 writes variable-bitrate mp3; for a set bitrate "
            "write wav and encode it, e.g. ffmpeg -i separated/song/vocals.wav -b:a 320k "
            "vocals.mp3",
        ),
        (["--stem", "vocals"], "--stem vocals", "did you mean --targets vocals?"),
        (["--stems", "vocals"], "--stems vocals", "did you mean --targets vocals?"),
        (
            ["-j", "4"],
            "-j 4",
            "--jobs is an option of umx batch: umx batch song.wav --jobs 4",
        ),
        (
            ["--jobs", "2"],
            "--jobs 2",
            "--jobs is an option of umx batch: umx batch song.wav --jobs 2",
        ),
        (
            ["--stdout", "--targets", "vocals"],
            "--stdout",
            "--stdout is an option of umx stream: umx stream song.wav --stdout --targets vocals",
        ),
        (
            ["--block=1024"],
            "--block=1024",
            "--block is an option of umx stream: umx stream song.wav --block=1024",
        ),
        (
            ["--model", "umxsynth", "umxsynth-rt"],
            "umxsynth-rt",
            "2 models given (umxsynth, umxsynth-rt); umx separate separates with one: run it "
            "once per model, each with its own --outdir (--model umxsynth --outdir "
            "separated/umxsynth)",
        ),
    ],
)
def test_another_tools_or_commands_option_is_answered(song, capsys, arguments, unknown, answer):
    line, status = error_of(capsys, "song.wav", *arguments)
    assert line == (
        f"umx separate: error: unrecognized arguments: {unknown}; {answer} "
        "(see umx separate --help)"
    )
    assert status == 2


def test_the_other_commands_options_are_theirs():
    """`OTHER_COMMAND_OPTIONS` stays true: each option is one of its command's."""
    for option, command in OTHER_COMMAND_OPTIONS.items():
        parser = build_parser({command})
        (sub,) = [a for a in parser._actions if hasattr(a, "choices") and a.choices]
        names = {name for action in sub.choices[command]._actions for name in action.option_strings}
        assert option in names, (option, command)


def test_demucs_stem_field_in_filename_is_umxs_target(song, capsys):
    line, status = error_of(capsys, "song.wav", "--filename", "{track}_{stem}.{ext}")
    assert line == (
        "umx: error: --filename: demucs's {stem} is umx's {target}: --filename "
        "'{track}_{target}.{ext}'"
    )
    assert status == 1


def test_model_given_twice_is_refused_not_the_last_taken(song, capsys):
    line, status = error_of(capsys, "song.wav", "--model", "umxsynth", "--model", "umxsynth-rt")
    assert line == (
        "umx separate: error: 2 models given (umxsynth, umxsynth-rt); umx separate separates "
        "with one: run it once per model, each with its own --outdir (--model umxsynth "
        "--outdir separated/umxsynth) (see umx separate --help)"
    )
    assert status == 2
    assert sorted(p.name for p in song.parent.iterdir()) == ["song.wav"]


@pytest.mark.parametrize(
    "models",
    [["--model", "umxsynth", "--model=umxsynth-rt"], ["--model", "umxsynth", "umxsynth-rt"]],
)
def test_two_models_to_evaluate_are_pointed_to_compare(song, capsys, models):
    line, status = error_of(capsys, "evaluate", *models, "--evaldir", "ev")
    answer = (
        "2 models given (umxsynth, umxsynth-rt); umx evaluate scores one: score each into its "
        "own --evaldir (--model umxsynth --evaldir ev/umxsynth), then umx evaluate --compare "
        "ev/umxsynth ev/umxsynth-rt --evaldir ev/compare"
    )
    unknown = "unrecognized arguments: umxsynth-rt; " if "umxsynth-rt" in models else ""
    assert line == f"umx evaluate: error: {unknown}{answer} (see umx evaluate --help)"
    assert status == 2
