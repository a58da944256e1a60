"""`umx distill --teacher-stems`: a teacher umx does not run, given by the stems another
separator made. The stems are matched to the songs, checked against them (they must add up
to the song, in time with it) and imported; the student learns them sample for sample."""

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from umx.audio import read_audio
from umx.cli import main
from umx.data.datasets import AlignedDataset
from umx.distill.stems import IMPORTED_DIR, find_teacher_stems, import_teacher_stems
from umx.distill.teacher import MIXTURE_FILE, track_name
from umx.errors import UmxError
from umx.zoo import load_separator

pytestmark = pytest.mark.usefixtures("one_thread")

RATE = 44100
STUDENT = [
    "--unidirectional", "--hidden-size", "8", "--epochs", "1", "--seq-dur", "0.5",
    "--samples-per-track", "2", "--batch-size", "4", "--quiet",
]  # fmt: skip


def sources(seed: int, seconds: float = 1.0) -> dict[str, np.ndarray]:
    """Two stereo sources, `(nb_channels, nb_timesteps)`: a gated tone and hiss."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) * (t * 4 % 1 < 0.5)
    hiss = 0.05 * rng.standard_normal(t.size)
    return {"tone": np.stack([tone, 0.5 * tone]), "hiss": np.stack([hiss, hiss])}


def write_song(music: Path, song: str, stems_folder: Path | None, seed: int) -> dict:
    """`music/song.wav` of two sources and, in `stems_folder`, the stems a perfect separator
    would give of it, as 16-bit flac files; returns the sources."""
    parts = sources(seed)
    (music / song).parent.mkdir(parents=True, exist_ok=True)
    sf.write(music / f"{song}.wav", sum(parts.values()).T, RATE, subtype="FLOAT")
    if stems_folder is not None:
        stems_folder.mkdir(parents=True)
        for name, audio in parts.items():
            sf.write(stems_folder / f"{name}.flac", audio.T, RATE)
    return parts


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> tuple[Path, Path]:
    """Three songs in two albums, their stems in a Demucs-like folder inside the music folder:
    `separated/<song>/<stem>.flac` for two, `separated/album1/<song>/` for the third."""
    music = tmp_path_factory.mktemp("library") / "music"
    stems = music / "separated"
    write_song(music, "album0/song0", stems / "song0", 0)
    write_song(music, "album0/song1", stems / "song1", 1)
    write_song(music, "album1/song2", stems / "album1" / "song2", 2)
    return music, stems


@pytest.fixture(scope="module")
def distilled(library, tmp_path_factory) -> tuple[Path, Path]:
    music, stems = library
    output = tmp_path_factory.mktemp("models") / "student"
    options = ["--output", str(output), "--teacher-stems", str(stems), *STUDENT]
    assert main(["distill", str(music), *options]) == 0
    return output, Path(f"{output}-work")


def test_the_student_learns_the_given_stems(distilled, library):
    """Each training item is the song and its given stem, sample for sample (the flac's
    samples); the stems folder inside the music folder is not taken for songs."""
    music, stems = library
    output, work = distilled
    songs = sorted(path for path in music.rglob("*.wav") if stems not in path.parents)
    assert len(songs) == 3
    song_of = {track_name(str(song)): song for song in songs}
    seen = []
    for split in ("train", "valid"):
        dataset = AlignedDataset(
            work / "data", split, input_file=MIXTURE_FILE, output_file="tone.wav",
            seq_duration=None, nb_channels=2,
        )  # fmt: skip
        for index, track in enumerate(dataset.tracks):
            song = song_of[Path(track.name).name]
            mixture, stem = dataset[index]
            given = next(stems.rglob(f"{song.stem}/tone.flac"))
            np.testing.assert_array_equal(stem.numpy(), read_audio(given)[0].numpy())
            np.testing.assert_array_equal(mixture.numpy(), read_audio(song)[0].numpy())
            seen.append(song.name)
    assert sorted(seen) == ["song0.wav", "song1.wav", "song2.wav"]
    provenance = json.loads((output / "distillation.json").read_text())
    assert provenance["distilled_from"] == {"stems_folder": str(stems), "stems": ["hiss", "tone"]}
    student = load_separator(output)
    assert student.targets == ["hiss", "tone"]
    assert all(model.unidirectional for model in student.target_models.values())


def test_a_second_run_imports_only_changed_stems_and_retrains_only_with_force(
    distilled, library, capsys
):
    """A stem changed since the student was trained is imported again, and the student trained
    on the old one is neither kept as trained nor resumed: the run is refused until --force
    trains it again (it had been skipped, and its provenance described the new stems)."""
    music, stems = library
    output, work = distilled
    imported = sorted((work / "teacher" / IMPORTED_DIR).rglob("*.wav"))
    assert len(imported) == 6
    times = {path: path.stat().st_mtime_ns for path in imported}
    changed = stems / "song1" / "hiss.flac"
    audio, _ = sf.read(changed)
    sf.write(changed, 0.5 * audio, RATE)  # still adds up within 6 dB: the hiss is quiet
    options = ["--output", str(output), "--teacher-stems", str(stems), *STUDENT]
    before = (output / "hiss.pth").read_bytes(), (output / "hiss.pth").stat().st_mtime_ns
    assert main(["distill", str(music), *options]) == 1
    (refusal,) = capsys.readouterr().err.splitlines()
    assert refusal == (
        f"umx: error: hiss in {output} was trained on another training set: songs or the "
        "teacher's stems of them were added, removed or changed since; give --force to train "
        "the student again on these, or another --output"
    )
    assert ((output / "hiss.pth").read_bytes(), (output / "hiss.pth").stat().st_mtime_ns) == before
    renewed = [path for path in imported if path.stat().st_mtime_ns != times[path]]
    folder = work / "teacher" / IMPORTED_DIR / track_name(str(music / "album0/song1.wav"))
    assert renewed == [folder / "hiss.wav", folder / "tone.wav"]
    np.testing.assert_array_equal(read_audio(renewed[0])[0], read_audio(changed)[0])
    assert main(["distill", str(music), *options, "--force"]) == 0
    assert (output / "hiss.pth").stat().st_mtime_ns != before[1]  # trained again
    assert main(["distill", str(music), *options[:-1]]) == 0  # not quiet: say what it skips
    assert "umx: hiss: trained before, skipped" in capsys.readouterr().err.splitlines()
    assert float(read_audio(changed)[0].abs().max()) == pytest.approx(
        0.5 * np.abs(audio).max(), abs=1e-4
    )


def stems_problem(tmp_path: Path, change) -> list[str]:
    """The warnings for one song whose stems `change(parts, folder)` spoils, beside a good
    song; the good song is imported whatever the bad one."""
    music, stems = tmp_path / "music", tmp_path / "stems"
    write_song(music, "good", stems / "good", 0)
    parts = write_song(music, "bad", None, 1)
    (stems / "bad").mkdir()
    change(parts, stems / "bad")
    songs = [str(music / "good.wav"), str(music / "bad.wav")]
    match = find_teacher_stems(songs, [str(music)], stems)
    teacher = import_teacher_stems(match, tmp_path / "work")
    assert [track.path for track in teacher.tracks] == songs[:1] and teacher.failed == 1
    return match.targets


def write_parts(folder: Path, parts: dict, rate: int = RATE) -> None:
    for name, audio in parts.items():
        sf.write(folder / f"{name}.wav", audio.T, rate, subtype="FLOAT")


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (  # 100 ms late: named as such
            lambda parts, folder: write_parts(
                folder, {k: np.pad(v, ((0, 0), (4410, 0)))[:, :RATE] for k, v in parts.items()}
            ),
            "bad.wav is left out: its stems are 100 ms late against the song",
        ),
        (  # 30 ms early
            lambda parts, folder: write_parts(
                folder, {k: np.pad(v[:, 1323:], ((0, 0), (0, 1323))) for k, v in parts.items()}
            ),
            "bad.wav is left out: its stems are 30 ms early against the song",
        ),
        (  # another song's
            lambda parts, folder: write_parts(folder, sources(7)),
            "bad.wav is left out: its stems add up to the song only within",
        ),
        (  # a second longer
            lambda parts, folder: write_parts(
                folder, {k: np.pad(v, ((0, 0), (0, RATE))) for k, v in parts.items()}
            ),
            "lasts 2.00 s, the song 1.00 s",
        ),
        (  # a NaN
            lambda parts, folder: write_parts(
                folder, {"tone": parts["tone"], "hiss": np.where(parts["hiss"] > 0.1, np.nan, 0)}
            ),
            "bad.wav is left out:",
        ),
        (  # rates that differ
            lambda parts, folder: (
                write_parts(folder, {"tone": parts["tone"]}),
                write_parts(folder, {"hiss": parts["hiss"][:, ::2]}, RATE // 2),
            ),
            "its stems differ in sample rate or channels",
        ),
    ],
)
def test_stems_that_are_not_the_songs_are_left_out(tmp_path, caplog, change, said):
    with caplog.at_level(logging.WARNING, "umx"):
        assert stems_problem(tmp_path, change) == ["hiss", "tone"]
    assert any(said in message for message in caplog.messages), caplog.messages
    assert "the student learns from 1 song; 1 had no stems that could be used" in caplog.messages


def test_stems_padded_or_cut_by_an_encoder_are_fitted_to_the_song(tmp_path):
    """Stems 20 ms longer or shorter than the song (an encoder's padding) are cut or padded
    with silence at the end."""
    music, stems = tmp_path / "music", tmp_path / "stems"
    parts = write_song(music, "long", None, 0)
    (stems / "long").mkdir(parents=True)
    write_parts(stems / "long", {k: np.pad(v, ((0, 0), (0, 882))) for k, v in parts.items()})
    parts = write_song(music, "short", None, 1)
    (stems / "short").mkdir()
    write_parts(stems / "short", {k: v[:, :-882] for k, v in parts.items()})
    songs = [str(music / "long.wav"), str(music / "short.wav")]
    teacher = import_teacher_stems(find_teacher_stems(songs, [], stems), tmp_path / "work")
    for track in teacher.tracks:
        tone, _ = read_audio(track.stems["tone"])
        assert tone.shape == (2, RATE)
    np.testing.assert_array_equal(tone[:, -882:].numpy(), 0)
    np.testing.assert_allclose(tone[:, :-882].numpy(), parts["tone"][:, :-882], atol=1e-7)


def test_songs_without_stems_or_sharing_a_folder_are_left_out(tmp_path, caplog):
    music, stems = tmp_path / "music", tmp_path / "stems"
    write_song(music, "a/intro", stems / "intro", 0)
    write_song(music, "b/intro", None, 1)
    write_song(music, "c/intro", None, 1)
    write_song(music, "b/outro", stems / "b" / "outro", 2)
    lost = [str(music / f"lost{index}.wav") for index in range(7)]
    for index in range(7):
        write_song(music, f"lost{index}", None, 3)
    shutil.copy(music / "b" / "outro.wav", stems / "b" / "outro" / "mixture.wav")  # MUSDB18's
    names = ("a/intro.wav", "b/intro.wav", "b/outro.wav", "c/intro.wav")
    songs = [str(music / name) for name in names]
    with caplog.at_level(logging.WARNING, "umx"):
        match = find_teacher_stems([*songs, *lost], [str(music)], stems)
    assert list(match.songs) == [songs[2]] and match.missing == 10
    assert match.targets == ["hiss", "tone"]
    assert [f"{song} has no stems in {stems}" for song in lost[:5]] == caplog.messages[:5]
    assert f"2 more songs have no stems in {stems}" == caplog.messages[5]
    assert any(
        message.startswith(
            f"{songs[0]}, {songs[1]} and 1 more song are left out: their stems are in the one"
        )
        for message in caplog.messages
    )
    caplog.clear()
    write_song(music, "b/outro", None, 2)  # b/outro.wav's twin in the same folder
    (music / "b" / "outro.wav").rename(music / "b" / "outro.flac")
    write_song(music, "b/outro", None, 2)
    twins = [str(music / "b" / "outro.wav"), str(music / "b" / "outro.flac")]
    with caplog.at_level(logging.WARNING, "umx"):
        find_teacher_stems([*twins, songs[0]], [str(music)], stems)
    assert caplog.messages[0].endswith(
        "(name each song's folder of stems with its extension (song.wav/, song.flac/))"
    )
    with pytest.raises(UmxError, match="holds no stems of the 1 song"):
        find_teacher_stems(lost[:1], [str(music)], stems)


def test_a_song_with_other_stems_than_most_is_left_out(tmp_path, caplog):
    """Most songs' stems are the student's targets, whichever song comes first; a song with
    others (a stray file, a missing stem), or a capitalised MUSDB18 `Mixture.wav`, is named."""
    music, stems = tmp_path / "music", tmp_path / "stems"
    for index, name in enumerate(("odd", "one", "two")):
        write_song(music, name, stems / name, index)
    shutil.copy(stems / "odd" / "hiss.flac", stems / "odd" / "bass.flac")
    shutil.copy(music / "one.wav", stems / "one" / "Mixture.wav")  # the song, not a stem
    songs = [str(music / f"{name}.wav") for name in ("odd", "one", "two")]
    with caplog.at_level(logging.WARNING, "umx"):
        match = find_teacher_stems(songs, [], stems)
    assert match.targets == ["hiss", "tone"] and list(match.songs) == songs[1:]
    assert match.missing == 1
    assert caplog.messages == [
        f"{songs[0]} is left out: its stems (bass, hiss, tone) are not those most songs have "
        "(hiss, tone); give every song the same stems, all those the teacher made"
    ]


@pytest.mark.parametrize("name", ["xumx", "Separator"])
def test_a_stem_named_as_a_model_directorys_own_file_is_refused(tmp_path, name):
    """The student's target files would be taken for an X-UMX model or the settings."""
    music, stems = tmp_path / "music", tmp_path / "stems"
    write_song(music, "song", stems / "song", 0)
    (stems / "song" / "hiss.flac").rename(stems / "song" / f"{name}.flac")
    with pytest.raises(UmxError, match=f"the stem .*{name}.flac has the target name '{name}'"):
        find_teacher_stems([str(music / "song.wav")], [], stems)


def run(args: list[str], capsys) -> tuple[int, list[str]]:
    code = main(["distill", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.splitlines()


def test_bad_options_are_refused_before_any_work(library, tmp_path, capsys):
    music, stems = library
    output = str(tmp_path / "student")
    given = [str(music), "--output", output]
    with pytest.raises(SystemExit) as stop:
        main(["distill", *given, "--teacher", "umxsynth", "--teacher-stems", str(stems)])
    assert stop.value.code == 2
    assert "not allowed with argument --teacher" in capsys.readouterr().err
    cases = [
        (["--teacher-stems", str(tmp_path / "none")], "is not a folder"),
        (["--teacher-stems", str(stems), "--niter", "2"], "--niter sets the teacher model's"),
        (["--teacher-stems", str(stems), "--jobs", "2"], "--jobs sets the teacher model's"),
        (["--teacher-stems", str(music)], "is the teacher's stems folder (--teacher-stems)"),
        (["--teacher-stems", str(stems), "--targets", "vocals"], "has no target 'vocals'"),
    ]
    for options, said in cases:
        code, lines = run([*given, *options], capsys)
        assert code == 1 and len(lines) <= 2 and said in lines[-1], lines
    other = tmp_path / "other"
    other.mkdir()
    inside = str(other / "student")
    code, lines = run([str(music), "--output", inside, "--teacher-stems", str(other)], capsys)
    assert code == 1 and "and --teacher-stems" in lines[-1]
    assert not os.path.exists(output) and not os.path.exists(inside)
    assert not os.path.exists(f"{output}-work") and not os.path.exists(f"{inside}-work")


def test_a_student_at_another_rate_than_the_stems_is_refused_before_their_import(
    library, tmp_path, capsys
):
    from umx.model import OpenUnmix
    from umx.modeldir import save_separator
    from umx.separator import Separator

    music, stems = library
    model = OpenUnmix(nb_bins=2049, hidden_size=8, unidirectional=True)
    student = save_separator(Separator({"tone": model}, sample_rate=22050).eval(), tmp_path / "s")
    output = tmp_path / "student"
    given = [str(music), "--output", str(output), "--teacher-stems", str(stems)]
    code, lines = run(
        [*given, "--student", str(student), "--targets", "tone", *STUDENT[3:]], capsys
    )
    assert (code, lines) == (
        1,
        [
            f"umx: error: --student {student} works at 22050 Hz, but the stems of "
            "--teacher-stems are at 44100 Hz: give a --student at 44100 Hz, or leave out "
            "--student to train new weights"
        ],
    )
    assert not output.exists() and not Path(f"{output}-work").exists()


def test_a_song_whose_stems_are_at_another_rate_is_refused_before_any_import(tmp_path, capsys):
    """Every song's stems are checked before the import: one song's at another rate than the
    others' was imported with them, and the training then failed, naming the work folder's
    copy (or the validation split's rate)."""
    music, stems = tmp_path / "music", tmp_path / "stems"
    for index in range(4):
        parts = write_song(music, f"song{index}", stems / f"song{index}", index)
    for path in (stems / "song3").iterdir():
        path.unlink()
    write_parts(stems / "song3", {name: audio[:, ::2] for name, audio in parts.items()}, RATE // 2)
    output = tmp_path / "student"
    given = [str(music), "--output", str(output), "--teacher-stems", str(stems), *STUDENT]
    assert run(given, capsys) == (
        1,
        [
            f"umx: error: --teacher-stems: {stems}/song3/hiss.wav is at 22050 Hz, but the "
            "stems of 3 songs are at 44100 Hz: give every song's stems at 44100 Hz"
        ],
    )
    assert not output.exists() and not Path(f"{output}-work").exists()


def test_a_teachers_stems_given_as_files_distill_the_same_student(tmp_path):
    """The stems a `--teacher umxsynth` run separated, given as `--teacher-stems` (in umx
    batch's layout, `<parent>/<song>.<ext>/<stem>.wav`), train the same student, weight for
    weight: the training set is the same, sample for sample."""
    music = tmp_path / "music"
    for index in range(3):
        write_song(music, f"album{index % 2}/song{index}", None, index)
    options = [*STUDENT, "--targets", "vocals"]
    by_model, by_stems = tmp_path / "by-model", tmp_path / "by-stems"
    assert (
        main(["distill", str(music), "--teacher", "umxsynth", "--output", str(by_model), *options])
        == 0
    )
    stems = Path(f"{by_model}-work") / "teacher"
    assert (
        main(
            [
                "distill",
                str(music),
                "--teacher-stems",
                str(stems),
                "--output",
                str(by_stems),
                *options,
            ]
        )
        == 0
    )
    before = torch.load(by_model / "vocals.pth", weights_only=True)
    after = torch.load(by_stems / "vocals.pth", weights_only=True)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    provenance = json.loads((by_stems / "distillation.json").read_text())
    assert provenance["distilled_from"]["stems"] == ["bass", "drums", "other", "vocals"]
