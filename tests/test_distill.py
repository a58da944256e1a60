"""`umx distill` end to end on three one-second songs with the bundled umxsynth as the teacher
and a tiny causal student: the training targets are the teacher's stems, the true sources are
never given, the model loads and streams, a stopped run resumes, bad input is refused."""

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import umx.api
import umx.audio.reading
import umx.batch.inputs
import umx.batch.job
import umx.batch.run
import umx.devices
import umx.train
import umx.train.loop
from processes import read_only_folder
from umx.audio import read_audio
from umx.cli import main
from umx.data.datasets import AlignedDataset
from umx.distill import DistillOptions
from umx.distill.messages import BATCH_WORDS, in_distill_words
from umx.distill.teacher import (
    MIXTURE_FILE,
    TeacherTrack,
    build_training_set,
    teacher_pass,
    track_name,
)
from umx.errors import UmxError
from umx.files import hold_lock, sha256_file
from umx.jobs import read_records
from umx.model_hash import export_sha256, model_sha256
from umx.onnx.options import EXPORT_JSON
from umx.zoo import load_separator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def teachers_on_one_thread():
    """The teacher's batch workers on one torch thread, as this process (`one_thread`): they
    would take the cores shared out (two on CI), and on a busy machine a second thread makes
    each step of the small models wait for it (a teacher's pass took 2 to 5 s more so)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(umx.devices, "threads_per_worker", lambda jobs, cores=None: 1)
        yield


RATE = 44100
STUDENT = [
    "--teacher", "umxsynth", "--unidirectional", "--hidden-size", "8", "--epochs", "1",
    "--seq-dur", "0.5", "--samples-per-track", "2", "--batch-size", "4", "--quiet",
]  # fmt: skip
TARGETS = ["--targets", "vocals", "bass"]


def make_songs(root: Path) -> tuple[Path, Path]:
    """`root/music`: three one-second songs in two album folders (a tone and hiss; the third
    mono at 22.05 kHz), and `root/truth`: their sources, which no distillation is given."""
    rng = np.random.default_rng(0)
    music, truth = root / "music", root / "truth"
    for index in range(3):
        rate, channels = (22050, 1) if index == 2 else (RATE, 2)
        t = np.arange(rate) / rate
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) * (t * 4 % 1 < 0.5)
        hiss = 0.05 * rng.standard_normal(rate)
        sources = {"tone": np.tile(tone, (channels, 1)), "hiss": np.tile(hiss, (channels, 1))}
        album, folder = music / f"album{index % 2}", truth / f"song{index}"
        album.mkdir(parents=True, exist_ok=True)
        folder.mkdir(parents=True)
        mixture = (sources["tone"] + sources["hiss"]).T.astype(np.float32)
        sf.write(album / f"song{index}.wav", mixture, rate, subtype="FLOAT")
        for name, audio in sources.items():
            sf.write(folder / f"{name}.wav", audio.T.astype(np.float32), rate, subtype="FLOAT")
    return music, truth


def distill(music: Path, output: Path, *options: str) -> int:
    return main(["distill", str(music), "--output", str(output), *STUDENT, *options])


def messages(capsys) -> list[str]:
    """What `umx` said on stderr since the last call: one message a line, none a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.splitlines()


def manifest(work: Path) -> list[dict]:
    """The records of the teacher's batch job."""
    return read_records(work / "teacher" / ".umx-job" / "manifest.jsonl")


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> tuple[Path, Path]:
    return make_songs(tmp_path_factory.mktemp("songs"))


@pytest.fixture(scope="module")
def distilled(songs, tmp_path_factory) -> tuple[Path, Path]:
    """The student's model directory and the work folder of one run."""
    output = tmp_path_factory.mktemp("models") / "student"
    assert distill(songs[0], output, *TARGETS) == 0
    return output, Path(f"{output}-work")


def test_the_training_targets_are_the_teachers_stems_of_the_music(distilled, songs):
    """Every song is separated once by the teacher; each training item is the song as the
    teacher heard it (resampled, made stereo) and the teacher's stem, sample for sample."""
    _, work = distilled
    music = sorted(songs[0].rglob("*.wav"))
    records = manifest(work)
    # the batch compacts its manifest at the end: one record per song, done at the first attempt
    assert [(record["status"], record["attempt"]) for record in records] == [("done", 1)] * 3
    stems = {record["input"]: record["outputs"] for record in records}
    assert sorted(stems) == [str(song) for song in music]
    song_of = {track_name(str(song)): song for song in music}
    seen = []
    for split in ("train", "valid"):
        for target in ("vocals", "bass"):
            dataset = AlignedDataset(
                work / "data", split, input_file=MIXTURE_FILE, output_file=f"{target}.wav",
                seq_duration=None, nb_channels=2,
            )  # fmt: skip
            for index, track in enumerate(dataset.tracks):
                song = song_of[Path(track.name).name]
                mixture, stem = dataset[index]
                teacher, _ = sf.read(stems[str(song)][target]["path"], dtype="float32")
                np.testing.assert_array_equal(stem.numpy(), teacher.T)
                heard, _ = read_audio(song, sample_rate=RATE, nb_channels=2)
                np.testing.assert_array_equal(mixture.numpy(), heard.numpy())
                assert float(stem.abs().max()) > 1e-3
                seen.append((split, song.name))
    split_of = {name: split for split, name in seen}  # each song in one split, for each target
    assert len(seen) == 2 * len(split_of) == 6
    assert sorted(split_of.values()) == ["train", "train", "valid"]


def test_no_true_source_is_read_or_copied(distilled, songs):
    """No audio file in the work folder is a true source, and the teacher's stems are not
    the sources either: the student learns from the teacher alone."""
    _, work = distilled
    truth = {sha256_file(path) for path in songs[1].rglob("*.wav")}
    written = [path for path in work.rglob("*.wav") if path.is_file() and not path.is_symlink()]
    assert len(written) == 3 * (4 + 1)  # the teacher's four stems and a mixture per song
    assert not truth & {sha256_file(path) for path in written}
    tone, _ = read_audio(songs[1] / "song0" / "tone.wav")
    stem, _ = read_audio(
        work / "data" / "tracks" / track_name(str(songs[0] / "album0" / "song0.wav")) / "vocals.wav"
    )
    assert float((stem - tone).abs().max()) > 1e-2


def test_the_student_is_a_causal_model_that_separates_and_streams(distilled, songs, tmp_path):
    output, _ = distilled
    provenance = json.loads((output / "distillation.json").read_text())
    teacher = load_separator("umxsynth")
    assert provenance["distilled_from"] == {
        "model": "umxsynth",
        "sha256": model_sha256(teacher),
        "stems": teacher.targets,
    }
    assert (provenance["tracks"], provenance["train_tracks"], provenance["valid_tracks"]) == (
        3,
        2,
        1,
    )
    assert provenance["hours"] == pytest.approx(3 / 3600, abs=1e-4)
    student = load_separator(output)
    assert student.targets == ["bass", "vocals"]
    for model in student.target_models.values():
        assert model.unidirectional and model.hidden_size == 8
    song = songs[0] / "album0" / "song0.wav"
    assert main(["stream", str(song), "--model", str(output), "--outdir", str(tmp_path), "-q"]) == 0
    for target in ("vocals", "bass"):
        audio, rate = sf.read(tmp_path / "song0" / f"{target}.wav")
        assert rate == RATE and audio.shape == (RATE, 2)
        assert np.isfinite(audio).all() and np.abs(audio).max() > 1e-4


def test_a_student_model_is_the_starting_point_and_keeps_its_architecture(
    distilled, songs, tmp_path, capsys
):
    """`--student DIR`: each target is fine-tuned from the model's weights (the run records
    it), with its architecture (hidden size 8, causal) although none is given; a bidirectional
    one is refused for a causal student before the teacher's pass."""
    start, _ = distilled
    output = tmp_path / "adapted"
    options = [*STUDENT[:2], *STUDENT[5:], "--student", str(start), "--targets", "vocals"]
    assert "--hidden-size" not in options and "--unidirectional" not in options
    assert main(["distill", str(songs[0]), "--output", str(output), *options]) == 0
    model = load_separator(output).target_models["vocals"]
    assert model.unidirectional and model.hidden_size == 8
    assert json.loads((output / "vocals.json").read_text())["args"]["model"] == str(start)
    before = torch.load(start / "vocals.pth", weights_only=True)
    after = torch.load(output / "vocals.pth", weights_only=True)
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before)  # trained

    refused = tmp_path / "refused"
    code = main(
        ["distill", str(songs[0]), "--output", str(refused), *STUDENT, "--student", "umxsynth"]
    )
    assert code == 1 and not refused.exists() and not Path(f"{refused}-work").exists()
    (line,) = messages(capsys)[-1:]
    assert line == (  # the first option of STUDENT that umxsynth's architecture contradicts
        "umx: error: --hidden-size 8 differs from --student umxsynth's 128: fine-tuning keeps "
        "the model's, so leave --hidden-size out"
    )
    for other, message in (
        ([], "--student umxsynth is bidirectional; --unidirectional needs a causal model"),
        (["--hidden-size", "16"], f"--hidden-size 16 differs from --student {start}'s 8"),
        (["--nfft", "2048"], f"--nfft 2048 differs from --student {start}'s"),
    ):
        student = "umxsynth" if not other else str(start)
        arguments = [*STUDENT[:2], *STUDENT[5:], "--unidirectional", *other, "--student", student]
        code = main(["distill", str(songs[0]), "--output", str(refused), *arguments])
        assert code == 1 and not refused.exists() and not Path(f"{refused}-work").exists()
        (line,) = messages(capsys)[-1:]
        assert line.startswith(f"umx: error: {message}"), line
    # a student without one of the targets: refused before the teacher's pass too
    for targets, advice in (
        ([], "give --targets vocals bass, or a --student"),
        (["--targets", "drums"], "give a --student"),
    ):
        arguments = [*STUDENT[:2], *STUDENT[5:], *targets, "--student", str(start)]
        code = main(["distill", str(songs[0]), "--output", str(refused), *arguments])
        assert code == 1 and not refused.exists() and not Path(f"{refused}-work").exists()
        (line,) = messages(capsys)[-1:]
        missing = "drums" if targets else "drums or other"
        assert line == (
            f"umx: error: --student {start} has no {missing} model (its targets are bass, "
            f"vocals): {advice} with every target trained"
        )


def causal_student(folder: Path, *, rate: float = RATE, nb_channels: int = 2) -> Path:
    """A tiny untrained causal vocals model (hidden size 8, the default STFT) in `folder`."""
    from umx.model import OpenUnmix
    from umx.modeldir import save_separator
    from umx.separator import Separator

    model = OpenUnmix(nb_bins=2049, nb_channels=nb_channels, hidden_size=8, unidirectional=True)
    separator = Separator({"vocals": model}, sample_rate=rate, nb_channels=nb_channels)
    return save_separator(separator.eval(), folder)


def test_a_one_channel_student_learns_from_the_stereo_teacher_made_mono(
    songs, tmp_path, capsys, monkeypatch
):
    """The student's channels rule the training data: a mono --student is fine-tuned on the
    teacher's stereo stems made mono (they were read as stereo and the student's first layer
    failed on them), unless --nb-channels contradicts it. Its training lines name --output as
    given (they named it absolute)."""
    monkeypatch.chdir(tmp_path)
    student = causal_student(Path("mono"), nb_channels=1)
    options = [*STUDENT[:2], *STUDENT[5:-1], "--student", str(student), "--targets", "vocals"]
    output = Path("out")
    assert main(["distill", str(songs[0]), "--output", str(output), *options]) == 0
    lines = messages(capsys)
    assert any(line.startswith("umx: training vocals on cpu into out: ") for line in lines)
    assert "umx: best validation loss" in lines[-2] and lines[-2].endswith(" model in out")
    assert json.loads((output / "separator.json").read_text())["nb_channels"] == 1
    assert load_separator(output).target_models["vocals"].nb_channels == 1
    refused = tmp_path / "refused"
    arguments = [*options, "--nb-channels", "2"]
    assert main(["distill", str(songs[0]), "--output", str(refused), *arguments]) == 1
    assert messages(capsys)[-1] == (
        f"umx: error: --nb-channels 2 differs from --student {student}'s 1: fine-tuning keeps "
        "the model's, so leave --nb-channels out"
    )
    assert not refused.exists() and not Path(f"{refused}-work").exists()


def test_a_student_at_another_rate_than_the_teacher_is_refused_before_its_pass(
    songs, tmp_path, capsys
):
    """It was refused after the whole teacher's pass (hours on a real library), naming the
    work folder; now before it, naming both models and what to do."""
    student = causal_student(tmp_path / "at22k", rate=22050)
    output = tmp_path / "out"
    options = [*STUDENT[:2], *STUDENT[5:], "--student", str(student), "--targets", "vocals"]
    assert main(["distill", str(songs[0]), "--output", str(output), *options]) == 1
    assert messages(capsys) == [
        f"umx: error: --student {student} works at 22050 Hz, but the teacher umxsynth "
        "separates at 44100 Hz: give a --student at 44100 Hz, or leave out --student to train "
        "new weights"
    ]
    assert not output.exists() and not Path(f"{output}-work").exists()


def test_a_run_again_does_nothing_and_other_settings_are_refused(
    distilled, songs, capsys, monkeypatch
):
    output, work = distilled
    before = len(manifest(work)), sha256_file(output / "vocals.pth")
    searched = []
    real = umx.batch.inputs._search
    monkeypatch.setattr(umx.batch.inputs, "_search", lambda *a: searched.append(a[0]) or real(*a))
    assert distill(songs[0], output, *TARGETS) == 0
    assert (len(manifest(work)), sha256_file(output / "vocals.pth")) == before
    assert searched == [str(songs[0])]  # searched once, for the batch and the training set
    messages(capsys)
    assert distill(songs[0], output, *TARGETS, "--lr", "0.01") == 1
    (error,) = messages(capsys)
    assert error.startswith("umx: error: ") and "--lr was 0.001, now 0.01" in error


def test_a_stopped_run_prints_the_command_that_resumes_it(songs, tmp_path, monkeypatch, capsys):
    """Ctrl-C after the first epoch of the second target: the same command (printed) resumes
    that target from its checkpoint, skips the finished one and does not run the teacher
    again."""
    output = tmp_path / "student"
    calls = []
    real = umx.train.run_training

    def stopped_after_an_epoch_of_the_second_target(given):
        calls.append((given["target"], given.get("checkpoint")))
        if len(calls) == 2:
            real({**given, "epochs": 1})
            raise KeyboardInterrupt
        return real(given)

    monkeypatch.setattr(umx.train, "run_training", stopped_after_an_epoch_of_the_second_target)
    two_epochs = [*TARGETS, "--epochs", "2"]
    assert distill(songs[0], output, *two_epochs) == 130
    hint, stopped = messages(capsys)  # --quiet: warnings and errors only
    assert stopped == "umx: interrupted"
    work = tmp_path / "student-work"
    separated, vocals = manifest(work), sha256_file(output / "vocals.pth")
    assert json.loads((output / "bass.json").read_text())["epochs_trained"] == 1
    command = shlex.split(hint.split(": ", 2)[2])
    assert command[:2] == ["umx", "distill"] and "--force" not in command
    assert main(command[1:]) == 0
    assert calls == [("vocals", None), ("bass", None), ("bass", output)]
    assert json.loads((output / "bass.json").read_text())["epochs_trained"] == 2
    assert sha256_file(output / "vocals.pth") == vocals
    assert manifest(work) == separated
    assert load_separator(output).targets == ["bass", "vocals"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--teacher", "nosuch"], "unknown model 'nosuch'"),
        (["--targets", "voice"], "has no target 'voice'"),
        (["--valid-fraction", "0"], "--valid-fraction must be greater than 0"),
        (["--epochs", "0"], "--epochs must be at least 1, not 0"),
        (["--lr", "0"], "--lr must be positive, not 0"),
        (["--nhop", "5000"], "--nfft 4096 and --nhop 5000"),
        (["--output", "{music}/album0/model"], "overlap: put the output folder outside"),
        (["--work", "{music}"], "overlap: put the work folder outside"),
        (["--work", "{output}"], "and --output {output} overlap"),
        (["--work", "{output}/work"], "and --output {output} overlap"),
        (["--work", "{output}/.."], "and --output {output} overlap"),
        (["--output", "{taken}"], "already holds files of another run"),
        (
            ["--teacher", "{taken}", "--output", "{taken}", "--force"],  # never its weights
            "--output {taken} and --teacher {taken} overlap: put the output folder outside the "
            "teacher's model directory",
        ),
        (["--student", "{taken}", "--work", "{taken}/w"], "--work {taken}/w and --student {taken}"),
        (["--teacher", "{taken}/..", "--force"], "--output {output} and --teacher {taken}/.. "),
        # found before the teacher's pass, not after it
        (["--output", "{taken}/notes.txt", "--force"], "--output {taken}/notes.txt is a file"),
        (["--work", "{taken}/notes.txt/w"], "--work {taken}/notes.txt/w cannot be made: {taken}/"),
    ],
)
def test_bad_input_is_a_one_line_error_and_writes_nothing(
    songs, tmp_path, capsys, options, message
):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    output = tmp_path / "student"
    names = {"music": songs[0], "output": output, "taken": taken}
    options = [option.format(**names) for option in options]
    message = message.format(**names)
    before = sorted(songs[0].rglob("*"))
    assert distill(songs[0], output, *options) == 1
    error = messages(capsys)[-1]  # after the teacher's warning that it is a demo model
    assert error.startswith("umx: error: ") and message in error
    assert sorted(songs[0].rglob("*")) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken"]
    assert (taken / "notes.txt").read_text() == "mine"


def test_one_song_is_refused_before_the_teachers_pass(songs, tmp_path, capsys):
    song = next(songs[0].rglob("*.wav"))
    assert distill(song, tmp_path / "student") == 1
    assert messages(capsys)[-1] == (
        "umx: error: distillation needs at least 2 songs (one to train on, one to validate on); "
        "the music holds 1: give more songs"
    )
    assert not any(tmp_path.iterdir())  # no teacher's stems, no work folder


def test_without_the_train_extra_it_is_refused_before_the_teachers_pass(
    songs, tmp_path, monkeypatch, capsys
):
    """It said so only after the teacher's pass, hours of separation with umxl."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert distill(songs[0], tmp_path / "student") == 1
    assert messages(capsys) == [
        "umx: error: umx train draws its loss curve with matplotlib, which is not installed: "
        "pip install 'umx[train]'"
    ]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("option", ["--output", "--work"])
def test_a_read_only_folder_is_refused_before_any_work(
    songs, tmp_path, monkeypatch, capsys, option
):
    """It said "cannot create the job directory ro/st-work/teacher/.umx-job (Read-only file
    system)", and a read-only --output only after the teacher's pass and an epoch."""
    (tmp_path / "ro").mkdir()
    read_only_folder(monkeypatch, tmp_path / "ro")
    monkeypatch.setattr(umx.batch.run, "run_batch_job", lambda *args, **kwargs: pytest.fail())
    folders = {"--output": tmp_path / "st", "--work": tmp_path / "work", option: tmp_path / "ro"}
    refused = folders[option] / "st"
    folders[option] = refused
    assert distill(songs[0], folders["--output"], "--work", str(folders["--work"])) == 1
    assert messages(capsys) == [
        f"umx: error: {option} {refused} cannot be written (Read-only file system; write elsewhere)"
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ro"]


def test_a_work_folder_another_distill_is_using_is_refused(songs, tmp_path, monkeypatch, capsys):
    """Two runs with --force at once: the one that lost said "WORK/data/train/.../mixture.wav
    does not exist", as the other was rebuilding the training set. The work folder is held
    for the whole run (here by this test, as the other run would)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(umx.batch.run, "run_batch_job", lambda *args, **kwargs: pytest.fail())
    lock = hold_lock(work)
    try:
        assert distill(songs[0], tmp_path / "st", "--work", str(work), "--force") == 1
    finally:
        lock.close()
    assert messages(capsys) == [
        f"umx: error: another umx distill is using {work}; wait for it to end, or give another "
        "--work"
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["work"]
    assert not any(work.iterdir())


def test_a_folder_without_music_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert distill(tmp_path / "empty", tmp_path / "student") == 1
    (error,) = messages(capsys)
    assert error.startswith("umx: error: the folder ") and "holds no .wav .flac" in error
    assert error.endswith(".mov file; it holds no files")  # distill has no --extensions
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]


@pytest.mark.parametrize(
    "mine", [["data/train/mysong/notes.txt", "data/valid/v.txt"], ["notes.txt"]]
)
def test_a_work_folder_holding_the_users_files_is_refused_and_kept(songs, tmp_path, capsys, mine):
    """A work folder is the distillation's alone: one holding files umx did not write (where
    the training set's split folders go, or anywhere) is refused before any work, and every
    file in it kept."""
    work = tmp_path / "project"
    for name in mine:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text("mine")
    assert distill(songs[0], tmp_path / "student", "--work", str(work)) == 1
    (error,) = messages(capsys)
    first = work / mine[0].split("/")[0] if len(mine) == 1 else work / "data/train/mysong"
    assert error.startswith(f"umx: error: --work {work} holds files umx did not write ({first}")
    assert error.endswith("give a new or empty folder as --work")
    assert sorted(path.relative_to(work).as_posix() for path in work.rglob("*.txt")) == mine
    assert sorted(path.name for path in tmp_path.iterdir()) == ["project"]


def test_the_training_set_removes_only_its_own_links(tmp_path):
    """Rebuilding the splits removes the links umx made there, and refuses (keeping it) any
    other file."""
    work = tmp_path / "work"
    (work / "data" / "tracks" / "song-1").mkdir(parents=True)
    (work / "data" / "valid").mkdir()
    (work / "data" / "valid" / "song-1").symlink_to(Path("..", "tracks", "song-1"))
    (work / "data" / "valid" / "elsewhere").symlink_to(tmp_path)
    with pytest.raises(UmxError, match=re.escape(f"({work / 'data/valid/elsewhere'}): give")):
        build_training_set([], work, valid_fraction=0.5, seed=0)
    assert sorted(path.name for path in (work / "data" / "valid").iterdir()) == [
        "elsewhere",
        "song-1",
    ]


def test_a_stopped_forced_run_with_new_settings_resumes_with_them(
    songs, tmp_path, monkeypatch, capsys
):
    """`--force --hidden-size 16` stopped before its target's first epoch: its resume (the
    printed command, without --force) trains that target with the new settings rather than
    keep the earlier run's model, whose json records hidden size 8."""
    output = tmp_path / "student"
    assert distill(songs[0], output, "--targets", "vocals") == 0
    real, calls = umx.train.run_training, []

    def stopped_before_the_first_epoch(given):
        calls.append(given)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(given)

    monkeypatch.setattr(umx.train, "run_training", stopped_before_the_first_epoch)
    wider = ["--targets", "vocals", "--hidden-size", "16"]
    assert distill(songs[0], output, *wider, "--force") == 130
    hint, _ = messages(capsys)
    command = shlex.split(hint.split(": ", 2)[2])
    assert "--force" not in command and main(command[1:]) == 0
    assert [given.get("checkpoint") for given in calls] == [None, None]
    assert load_separator(output).target_models["vocals"].hidden_size == 16
    assert json.loads((output / "vocals.json").read_text())["args"]["hidden_size"] == 16


def test_silent_songs_are_left_out_of_the_training_set(tmp_path, caplog):
    """A silent song, or one whose teacher's stems are all silent, is left out with a warning
    (as a validation song its loss of 0 froze the student at its first epoch); fewer than two
    songs left are refused."""
    noise = 0.1 * np.random.default_rng(0).standard_normal((RATE // 4, 2)).astype(np.float32)
    tracks = []
    for name, mixture, stem in [
        ("loud", noise, noise),
        ("louder", 2 * noise, noise),
        ("silent", 0 * noise, 0 * noise),
        ("unheard", noise, 1e-6 * noise),  # the teacher heard nothing in it
    ]:
        sf.write(tmp_path / f"{name}.wav", mixture, RATE, subtype="FLOAT")
        sf.write(tmp_path / f"{name}-stem.wav", stem, RATE, subtype="FLOAT")
        stems = {"vocals": tmp_path / f"{name}-stem.wav"}
        tracks.append(TeacherTrack(str(tmp_path / f"{name}.wav"), stems))
    for _ in range(2):  # the second run reads what the first found
        caplog.clear()
        data = build_training_set(tracks, tmp_path / "work", valid_fraction=0.5, seed=0)
        kept = sorted(data.train + data.valid)
        assert kept == sorted(track_name(str(tmp_path / f"{n}.wav")) for n in ("loud", "louder"))
        assert data.seconds == 0.5
        assert [record.getMessage() for record in caplog.records] == [
            f"{tmp_path / 'silent.wav'} is left out of the training set: it is silent",
            f"{tmp_path / 'unheard.wav'} is left out of the training set: the teacher's stems of "
            "it are all silent",
        ]
    with pytest.raises(UmxError, match=r"the teacher separated 3, 2 of them silent$"):
        build_training_set(tracks[1:], tmp_path / "work", valid_fraction=0.5, seed=0)


def test_a_pattern_is_kept_apart_from_the_output_as_its_folder_is(songs, tmp_path, capsys):
    """The folder a glob pattern searches counts as a music folder: an output inside it is
    refused (its resume read the work folder's mixtures as music: 'given twice'), and so is a
    music file inside the work folder."""
    pattern = f"{songs[0]}/**/*.wav"
    before = sorted(songs[0].rglob("*"))
    assert main(["distill", pattern, "--output", f"{songs[0]}/out", *STUDENT]) == 1
    (error,) = messages(capsys)
    assert error.startswith(
        f"umx: error: --output {songs[0]}/out and the music folder {songs[0]} (of the pattern "
        f"{pattern}) overlap: put the output folder outside the music"
    )
    song = tmp_path / "student-work" / "song.wav"
    song.parent.mkdir()
    sf.write(song, np.zeros((RATE, 2)), RATE)
    assert distill(song, tmp_path / "student") == 1
    (error,) = messages(capsys)
    assert error.startswith(
        f"umx: error: --work {song.parent} and the music file {song} overlap: put the work "
        "folder outside the music"
    )
    assert sorted(songs[0].rglob("*")) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["student-work"]


def test_the_teacher_never_takes_the_work_folder_for_music(songs, tmp_path, monkeypatch):
    """A pattern that would match the training set's mixtures leaves out the whole work
    folder, not only the teacher's stems."""
    music = tmp_path / "music"
    shutil.copytree(songs[0], music)
    mixture = music / "work" / "data" / "tracks" / "song-1" / MIXTURE_FILE
    mixture.parent.mkdir(parents=True)
    shutil.copy(music / "album0" / "song0.wav", mixture)
    given = []

    def no_batch(batch, inputs):
        given.extend(item.path for item in inputs)
        raise KeyboardInterrupt

    monkeypatch.setattr(umx.batch.run, "run_batch_job", no_batch)
    with pytest.raises(KeyboardInterrupt):
        teacher_pass([f"{music}/**/*.wav"], "umxsynth", music / "work", quiet=True)
    assert given == sorted(str(path) for path in music.glob("album*/*.wav"))


def test_batch_and_train_speak_in_distills_options(songs, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the teacher's pass or in training prints the distillation's resume command
    alone (not batch's or train's, which resume the pass or one target); a teacher's stem
    damaged since is separated again (the song was left out, with advice naming
    --retry-failed); a job of other settings names --work, not --job."""
    output = tmp_path / "student"

    def interrupted(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # in the teacher's pass: batch's hint left out too
        patch.setattr(umx.batch.job.Job, "append", interrupted)
        assert distill(songs[0], output, "--targets", "vocals") == 130
    hint, stopped = messages(capsys)
    assert hint.startswith("umx: to resume the distillation: umx distill ")
    assert stopped == "umx: interrupted"
    with monkeypatch.context() as patch:
        patch.setattr(umx.train.loop.Trainer, "_epochs", interrupted)
        assert distill(songs[0], output, "--targets", "vocals") == 130
    hint, stopped = messages(capsys)
    assert hint.startswith("umx: to resume the distillation: umx distill ")
    assert stopped == "umx: interrupted"
    (stem,) = (tmp_path / "student-work" / "teacher").glob("album1/song1.wav/vocals.wav")
    separated, _ = sf.read(stem)
    with open(stem, "r+b") as file:
        file.truncate(1000)
    assert main(shlex.split(hint.split(": ", 2)[2])[1:]) == 0
    (warning,) = messages(capsys)
    assert warning.endswith(f"{stem} changed since it was written; separating it again")
    np.testing.assert_allclose(sf.read(stem)[0], separated, atol=1e-6)
    assert json.loads((output / "distillation.json").read_text())["tracks"] == 3

    assert distill(songs[0], output, "--targets", "vocals", "--niter", "2", "--force") == 1
    (error,) = messages(capsys)
    assert error.endswith(
        "(--niter was 1, now 2): run it with the same --teacher and --niter (--force keeps the "
        "teacher's stems), or give another --work"
    )


def test_every_batch_phrase_reworded_is_one_batch_says():
    """The phrases `in_distill_words` replaces follow batch's messages: a phrase batch no longer
    says would leave its advice in batch's options."""
    sources = [*Path(umx.batch.__file__).parent.glob("*.py"), Path(umx.audio.reading.__file__)]
    sources.append(Path(umx.api.__file__))
    texts = [
        node.value
        for source in sources
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    for phrase, _ in BATCH_WORDS:
        assert any(phrase in text for text in texts), phrase


def test_songs_whose_stems_would_collide_are_told_apart_in_distills_words(tmp_path, capsys):
    rate, rng = 8000, np.random.default_rng(0)
    for album in ("a", "b"):
        (tmp_path / "music" / album / "x").mkdir(parents=True)
        audio = 0.1 * rng.standard_normal((rate, 2)).astype(np.float32)
        sf.write(tmp_path / "music" / album / "x" / "song.wav", audio, rate)
    assert distill(tmp_path / "music", tmp_path / "student") == 1
    error = messages(capsys)[-1]
    assert error.endswith(
        "; rename one of the songs or its folder (the teacher's stems are kept by folder and "
        "song name)"
    )
    assert "--filename" not in error


def test_a_song_the_teacher_cannot_separate_is_tried_again_by_the_same_command(
    songs, tmp_path, monkeypatch, capsys
):
    """The advice for a song the teacher failed works from umx distill: its own line (not
    batch's, whose --status pointer comes after), and batch's --status, which then says the same
    command tries again (not --retry-failed, which umx distill refuses). Relative paths stay
    relative."""
    monkeypatch.chdir(tmp_path)
    music, output = Path("music"), Path("student")
    shutil.copytree(songs[0], music)
    (music / "album0" / "bad.wav").write_bytes(b"garbage")
    assert distill(music, output, "--targets", "vocals") == 0
    job = "student-work/teacher/.umx-job"
    assert messages(capsys) == [
        "umx: failed: music/album0/bad.wav is not decodable audio (neither libsndfile nor ffmpeg "
        "knows its format)",
        f"umx: the student learns from 3 songs; the teacher could not separate 1 (umx batch "
        f"--status {job} says why): the same command tries again",
    ]
    assert main(["batch", "--status", job]) == 0
    assert "left: nothing (1 failed: the same command tries again)" in capsys.readouterr().out
    assert distill(music, output, "--targets", "vocals") == 0
    (bad,) = [r for r in manifest(tmp_path / "student-work") if r["status"] == "failed"]
    assert bad["attempt"] == 2  # tried again


def test_the_output_is_named_as_given(songs, monkeypatch, capsys):
    monkeypatch.chdir(songs[0].parent)
    assert main(["distill", "music", "--output", "music/x", *STUDENT]) == 1
    assert messages(capsys) == [
        "umx: error: --output music/x and the music folder music overlap: put the output folder "
        "outside the music, so that neither is read or written as the other"
    ]


def test_the_help_of_jobs_says_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "--jobs N the teacher's worker processes (default: 1) --force" in text


def test_batch_advice_is_reworded_into_distills_options():
    assert in_distill_words(
        "song.wav: 6 channels; umx separates mono or stereo audio (use --downmix to average "
        "the channels)"
    ) == ("song.wav: 6 channels; umx separates mono or stereo audio (convert it to stereo, or "
          "leave it out)")  # fmt: skip
    assert "--" not in in_distill_words(
        "song.wav: done before, but its output vocals.wav changed since it was written; left as "
        "it is: --retry-failed separates the input again and replaces it"
    )


def test_an_onnx_export_student_is_refused_naming_the_model_it_was_exported_from(
    songs, tmp_path, capsys
):
    export = tmp_path / "onnx_t"
    export.mkdir()
    (export / EXPORT_JSON).write_text(json.dumps({"format": "umx-onnx", "model": "umxsynth"}))
    assert distill(songs[0], tmp_path / "student", "--student", str(export)) == 1
    (error,) = messages(capsys)
    assert error == (
        f"umx: error: --student {export} is an ONNX export (umx export), which umx distill "
        "cannot train: give the model it was exported from (umxsynth)"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["onnx_t"]


def test_an_onnx_export_teaches_with_the_stems_onnxruntime_gives(songs, tmp_path, capsys):
    """An export folder as --teacher is run by onnxruntime on the CPU (whatever --device, the
    student's): its stems are those `umx separate --model EXPORT` writes, and the provenance
    names the export and the hash batch records for it."""
    export = tmp_path / "onnx_t"
    assert main(["export", "umxsynth", str(export), "-q"]) == 0
    output = tmp_path / "student"
    options = [*STUDENT[2:], "--teacher", str(export), "--targets", "vocals", "--device", "cpu"]
    assert main(["distill", str(songs[0]), "--output", str(output), *options]) == 0
    song = songs[0] / "album1" / "song1.wav"
    stems = ["--subtype", "FLOAT", "--clip", "none", "--outdir", str(tmp_path / "sep"), "-q"]
    assert main(["separate", str(song), "--model", str(export), *stems]) == 0
    record = next(r for r in manifest(Path(f"{output}-work")) if r["input"] == str(song))
    for target in ("vocals", "drums"):
        taught, _ = sf.read(record["outputs"][target]["path"], dtype="float32")
        separated, _ = sf.read(tmp_path / "sep" / "song1" / f"{target}.wav", dtype="float32")
        np.testing.assert_array_equal(taught, separated)
    teacher = json.loads((output / "distillation.json").read_text())["distilled_from"]
    hashed = export_sha256(export, load_separator("umxsynth").targets)
    assert teacher == {"model": str(export), "sha256": hashed, "stems": teacher["stems"]}
    assert messages(capsys) == []


def test_the_docs_miniature_runs_as_a_saved_script(tmp_path):
    """docs/distillation.md's miniature, saved to a file and run with `python FILE` (not `-c`,
    as tests/test_docs.py runs it): the teacher's workers import the script again, which
    without its `__main__` guard ran the distillation again in each of them."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "distillation.md").read_text()
    code = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)[-1]
    (tmp_path / "miniature.py").write_text(code)
    env = {
        **os.environ,
        "UMX_OFFLINE": "1",
        "UMX_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    result = subprocess.run(
        [sys.executable, "miniature.py"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == "umxsynth"


def test_a_song_changed_since_is_decoded_again_for_its_mixture(tmp_path):
    """The teacher separates a changed song again (umx batch); its mixture.wav must follow,
    not stay the old song's beside the new stems (a training pair of two songs)."""
    rng = np.random.default_rng(0)
    song, stem = tmp_path / "song.wav", tmp_path / "stem.wav"
    tracks = [TeacherTrack(str(song), {"vocals": stem})]
    for other in (tmp_path / "other.wav", tmp_path / "third.wav"):  # two songs at least
        sf.write(other, 0.1 * rng.standard_normal((RATE // 4, 2)), RATE, subtype="FLOAT")
        tracks.append(TeacherTrack(str(other), {"vocals": other}))
    mixture = tmp_path / "work" / "data" / "tracks" / track_name(str(song)) / MIXTURE_FILE
    for scale in (0.1, 0.3):
        audio = (scale * rng.standard_normal((RATE // 4, 2))).astype(np.float32)
        sf.write(song, audio, RATE, subtype="FLOAT")
        sf.write(stem, audio / 2, RATE, subtype="FLOAT")
        build_training_set(tracks, tmp_path / "work", valid_fraction=0.5, seed=0)
        np.testing.assert_array_equal(sf.read(mixture, dtype="float32")[0], audio)
    sf.write(stem, np.zeros((5513, 1), np.float32), RATE // 2)  # another rate and channels
    build_training_set(tracks, tmp_path / "work", valid_fraction=0.5, seed=0)
    assert sf.info(mixture).samplerate == RATE // 2 and sf.info(mixture).channels == 1


def test_typed_options_are_checked_when_built(songs, tmp_path):
    """`DistillOptions`, the library's options: one path or many, one target or many, and the
    command line's refusals, before anything is written."""
    options = DistillOptions(songs[0], tmp_path / "s", teacher="umxsynth", targets="vocals")
    assert options.music == (str(songs[0]),) and options.targets == ("vocals",)
    assert options.output == tmp_path / "s" and options.work == tmp_path / "s-work"
    refused = [
        ({"teacher": "umxsynth", "teacher_stems": str(tmp_path)}, "give one teacher"),
        ({}, "give one teacher"),
        ({"teacher": "umxsynth", "force": "false"}, "--force must be True or False"),
        ({"teacher": "umxsynth", "lr": float("nan")}, "--lr"),
        ({"teacher": "umxsynth", "valid_fraction": 0.9}, "--valid-fraction"),
        ({"teacher": "umxsynth", "work": songs[0] / "w"}, "overlap"),
    ]
    for given, said in refused:
        with pytest.raises(UmxError, match=re.escape(said)):
            DistillOptions([songs[0]], tmp_path / "s", **given)
    with pytest.raises(UmxError, match="give the music"):
        DistillOptions([], tmp_path / "s", teacher="umxsynth")
    for music in (None, 5, b"music"):
        with pytest.raises(UmxError, match="MUSIC must be a path or a list of paths"):
            DistillOptions(music, tmp_path / "s", teacher="umxsynth")
    for device, said in (("bogus", "unknown device 'bogus'"), (5, "--device must be")):
        with pytest.raises(UmxError, match=said):  # before the teacher's pass or any import
            DistillOptions([songs[0]], tmp_path / "s", teacher="umxsynth", device=device)
    assert sorted(path.name for path in tmp_path.iterdir()) == []
