"""`umx synth`: renders General MIDI songs into four-stem tracks in the MUSDB18-HQ layout.

Each track is an excerpt of a song (a General MIDI file, or a song of
:mod:`umx.data.procedural`) whose notes are split into the four stems by General MIDI rules
(:mod:`umx.data.gm`).

Every stem is rendered on its own by the ``fluidsynth`` program with a General MIDI soundfont,
then levelled, panned and quantised to 16 bits; the mixture is the sum of the quantised stems,
so reading the files back, the stems sum exactly to the mixture. Each track draws its excerpt,
soundfont, transposition, tempo, stem gains and panning from ``--seed``, so a dataset is
reproduced byte for byte by the same command with the same fluidsynth and soundfonts.

Songs, not tracks, are split: a song's excerpts all go to one of train, valid (kept in ``train/``
and listed in ``setup.yaml``'s ``validation_tracks``, as musdb expects) and test, and the test
split is rendered with soundfonts that train and valid never use. ``synth.json`` records every
track's song, soundfont and parameters.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import random
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import IO

import numpy as np
import soundfile
from tqdm import tqdm

from umx import __version__
from umx.data.gm import DRUM_CHANNEL, REVOICE_PROGRAMS, STEMS, analyse, split_stems, valid_starts
from umx.data.midi import (
    CONTROL_CHANGE,
    Event,
    Song,
    TempoMap,
    encode_midi,
    excerpt,
    read_midi,
    scale_tempo,
    transpose,
)
from umx.data.procedural import generate_song
from umx.defaults import (
    DURATION,
    SAMPLE_RATE,
    SOUNDFONT_PACKAGES,
    TEST_FRACTION,
    TEST_SOUNDFONTS,
    TRAIN_SOUNDFONTS,
    VALID_FRACTION,
)
from umx.errors import UmxError
from umx.files import staged_folder, write_atomic

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SUSTAIN_PEDAL, ALL_NOTES_OFF = 64, 123
MIDI_SUFFIXES = frozenset((".mid", ".midi", ".kar"))

SILENCE_DB = -60.0
"""An excerpt with a stem quieter than this (RMS, dB full scale, as rendered) is skipped."""
RENDER_TIMEOUT = 600
"""Seconds one fluidsynth run may take: it renders a track many times faster than real time."""
RENDER_GAIN = 0.5
"""fluidsynth's master gain; stems are levelled afterwards, so it only sets the silence scale."""
STEM_DB = -20.0
"""Every stem is first brought to this RMS level, then given a random gain."""
GAIN_RANGE_DB = (-6.0, 6.0)
PAN_RANGE = 0.3
"""Stereo balance of a stem: -1 left, 0 centre, 1 right."""
PEAK_RANGE_DB = (-6.0, -1.0)
"""The peak level of the loudest of a track's mixture and stems."""
TRANSPOSE_RANGE = (-3, 3)
TEMPO_RANGE = (0.9, 1.1)
SUNG_CHANCE = 0.8
SUNG_SHARE = (0.3, 1.0)
"""With --sung, this fraction of tracks has the singer in its vocals, at this share of the level."""
FADE_SECONDS = 1.0
"""Fade in and out of the example song."""
PCM_SCALE = 32768
DATASET_FILES = frozenset(("train", "test", "synth.json", "setup.yaml"))
SETTINGS = (
    "midi", "procedural", "soundfont", "test_soundfont", "test_fraction", "valid_fraction",
    "excerpts", "duration", "sample_rate", "seed", "drum_kits", "test_drum_kits", "production",
    "sung",
)  # fmt: skip
"""The options recorded in ``synth.json``."""


@dataclass(frozen=True)
class SongRef:
    """Where a song comes from: a MIDI file, or a seed of the procedural generator.

    Attributes:
        name: a short unique name, the prefix of its tracks' names.
        path: the General MIDI file, or None for a procedural song.
        seed: the procedural song's seed.
        min_seconds: the procedural song's shortest length.
    """

    name: str
    path: str | None = None
    seed: int | None = None
    min_seconds: float = 0.0

    def load(self) -> Song:
        """The song's events."""
        if self.path is None:
            return generate_song(self.seed, self.min_seconds)
        return read_midi(self.path)


@dataclass(frozen=True)
class TrackPlan:
    """Everything that decides how one track sounds.

    Attributes:
        name: the track's folder name.
        split: ``train``, ``valid`` or ``test``.
        song: the song it is an excerpt of.
        soundfont: the soundfont it is rendered with.
        start: where the excerpt starts in the song, in seconds at the song's own tempo.
        tempo: the playback speed (1.1 = 10% faster).
        transpose: semitones added to every pitched note.
        revoice: ``{channel: GM program}`` for the parts re-voiced as vocals or bass.
        gains_db: each stem's gain after levelling.
        pans: each stem's stereo balance.
        peak_db: the peak of the loudest of the mixture and the stems.
        drum_kit: the Hydrogen drum kit that plays the drums, or None for the soundfont's.
        production: the effect chains of :func:`umx.data.production.draw_production`, or None.
        sung: the formant singer's share of the vocals (0: the voice patch alone).
        seed: the seed of the kit's, the singer's and the effects' own random choices.
    """

    name: str
    split: str
    song: SongRef
    soundfont: str
    start: float
    tempo: float
    transpose: int
    revoice: dict[int, int]
    gains_db: dict[str, float]
    pans: dict[str, float]
    peak_db: float
    drum_kit: str | None = None
    production: dict | None = None
    sung: float = 0.0
    seed: int = 0


def check_fluidsynth() -> str:
    """The path of the fluidsynth program.

    Raises:
        UmxError: it is not installed.
    """
    path = shutil.which("fluidsynth")
    if path is None:
        raise UmxError("fluidsynth is not installed (apt-get install fluidsynth)")
    return path


def check_soundfont(path: str | Path) -> Path:
    """``path`` resolved, if it is a SoundFont file (sf2, or sf3 with compressed samples).

    Raises:
        UmxError: it is missing (naming the Debian package that installs it when umx knows it),
            or is not a SoundFont.
    """
    path = Path(path)
    if not path.is_file():
        package = SOUNDFONT_PACKAGES.get(path)
        hint = f" (apt-get install {package})" if package else ""
        raise UmxError(f"soundfont {path} not found{hint}")
    with open(path, "rb") as file:
        header = file.read(12)
    if header[:4] != b"RIFF" or header[8:12] != b"sfbk":
        raise UmxError(f"{path} is not a SoundFont file")
    return path.resolve()


def render_midi(song: Song, soundfont: Path, nb_samples: int, sample_rate: int) -> np.ndarray:
    """Renders ``song`` with fluidsynth.

    fluidsynth renders until every note has faded out, so the notes still held at the song's
    end are released there (sustain pedal up, all notes off, on every channel). Its fallback
    soundfont is turned off, so that a soundfont it cannot load gives silence, not another
    soundfont's sound.

    Returns:
        ``(nb_channels=2, nb_samples)`` float64 samples, cut or padded with zeros.

    Raises:
        UmxError: fluidsynth fails (its last message is quoted).
    """
    with tempfile.TemporaryDirectory(prefix="umx-synth-") as folder:
        midi_path, wav_path = Path(folder, "song.mid"), Path(folder, "song.wav")
        release = [
            Event(song.end_tick, CONTROL_CHANGE | channel, bytes((number, 0)))
            for channel in range(16)
            for number in (SUSTAIN_PEDAL, ALL_NOTES_OFF)
        ]
        midi_path.write_bytes(encode_midi(replace(song, events=song.events + release)))
        command = [
            check_fluidsynth(), "-n", "-i", "-q", "-o", "synth.default-soundfont=",
            "-o", "synth.dynamic-sample-loading=1",
            "-F", str(wav_path), "-T", "wav", "-O", "float", "-r", str(sample_rate),
            "-g", str(RENDER_GAIN), str(soundfont), str(midi_path),
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, check=False, timeout=RENDER_TIMEOUT
            )
        except subprocess.TimeoutExpired as error:
            raise UmxError(f"fluidsynth took over {RENDER_TIMEOUT} s with {soundfont}") from error
        if result.returncode != 0 or not wav_path.is_file():
            message = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise UmxError(f"fluidsynth failed with {soundfont} ({message})")
        audio, _ = soundfile.read(wav_path, dtype="float64", always_2d=True)
    audio = audio[:nb_samples].T
    return np.pad(audio, ((0, 0), (0, nb_samples - audio.shape[1])))


def _level_db(audio: np.ndarray) -> float:
    """RMS level in dB full scale (-inf for silence)."""
    rms = float(np.sqrt(np.mean(np.square(audio))))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def render_track(
    plan: TrackPlan, duration: float, sample_rate: int, fade: float = 0.0
) -> dict[str, np.ndarray] | None:
    """Renders one track.

    Args:
        plan: the track.
        duration: its length in seconds.
        sample_rate: samples per second.
        fade: seconds of fade-in and fade-out.

    Returns:
        ``{stem: (nb_samples, nb_channels=2) int16}`` for the four stems and ``mixture``, their
        exact sum; None when a stem renders silent. The loudest of the mixture and the stems
        peaks at ``plan.peak_db``.
    """
    song = plan.song.load()
    tempo_map = TempoMap(song)
    start = tempo_map.tick(plan.start)
    end = tempo_map.tick(plan.start + duration * plan.tempo)
    song = excerpt(song, start, end)
    song = transpose(scale_tempo(song, plan.tempo), plan.transpose, frozenset({DRUM_CHANNEL}))
    nb_samples = round(duration * sample_rate)
    soundfont = Path(plan.soundfont)
    parts = split_stems(song, plan.revoice)
    if plan.drum_kit or plan.sung or plan.production:
        effects, sampler, singer = levers()
    raw = {
        stem: sampler.play_drums(
            part, sampler.load_kit(plan.drum_kit), nb_samples, sample_rate, plan.seed
        )
        if stem == "drums" and plan.drum_kit
        else render_midi(part, soundfont, nb_samples, sample_rate)
        for stem, part in parts.items()
    }
    if any(_level_db(audio) < SILENCE_DB for audio in raw.values()):
        return None
    if plan.sung:
        sung = singer.sing(parts["vocals"], nb_samples, sample_rate, plan.seed)
        if _level_db(sung) > SILENCE_DB:
            patch = raw["vocals"] * 10 ** (-_level_db(raw["vocals"]) / 20)
            raw["vocals"] = (
                patch * (1 - plan.sung) + sung * 10 ** (-_level_db(sung) / 20) * plan.sung
            )
    if plan.production:
        room = plan.production["room"]
        for stem, chain in plan.production["stems"].items():
            raw[stem] = effects.apply_chain(raw[stem], chain, room, sample_rate)
    envelope = np.ones(nb_samples)
    if fade:
        ramp = np.linspace(0, 1, round(fade * sample_rate))
        envelope[: len(ramp)], envelope[len(envelope) - len(ramp) :] = ramp, ramp[::-1]
    stems = {}
    for stem, audio in raw.items():
        gain = 10 ** ((STEM_DB + plan.gains_db[stem] - _level_db(audio)) / 20)
        angle = (plan.pans[stem] + 1) * math.pi / 4
        balance = math.sqrt(2) * np.array([[math.cos(angle)], [math.sin(angle)]])
        stems[stem] = audio * gain * balance * envelope
    peak = max(np.abs(audio).max() for audio in [sum(stems.values()), *stems.values()])
    scale = 10 ** (plan.peak_db / 20) / peak * PCM_SCALE
    tracks = {stem: np.round(audio * scale).astype(np.int16).T for stem, audio in stems.items()}
    mixture = sum(audio.astype(np.int32) for audio in tracks.values())
    tracks["mixture"] = mixture.astype(np.int16)
    return tracks


def write_pcm16(
    path: Path | IO[bytes], audio: np.ndarray, sample_rate: int, suffix: str | None = None
) -> None:
    """Writes 16-bit samples exactly, as wav or flac by ``suffix`` (by default ``path``'s; an
    open file needs it)."""
    kind = (suffix or Path(path).suffix)[1:].upper()  # type: ignore[arg-type]
    soundfile.write(path, audio, sample_rate, subtype="PCM_16", format=kind)


def _render_task(task: tuple[TrackPlan, float, int, Path]) -> dict[str, float] | None:
    """Renders a track into its folder; returns its stems' levels, or None if skipped."""
    plan, duration, sample_rate, folder = task
    tracks = render_track(plan, duration, sample_rate)
    if tracks is None:
        return None
    folder.mkdir(parents=True)
    levels = {}
    for name, audio in tracks.items():
        write_pcm16(folder / f"{name}.wav", audio, sample_rate)
        levels[name] = round(_level_db(audio / PCM_SCALE), 2)
    return levels


def derive_seed(seed: int, *names: object) -> int:
    """An independent seed for the thing ``names`` name, from the run's ``seed``."""
    return random.Random(":".join(map(str, (seed, *names)))).getrandbits(31)


def find_midi_files(paths: Sequence[str | Path]) -> list[Path]:
    """The MIDI files given, and those under the folders given, in a stable order.

    Raises:
        UmxError: a path does not exist.
    """
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = (p for p in path.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES)
            files += sorted(p for p in found if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise UmxError(f"MIDI file or folder {path} not found")
    return files


def _split(songs: list[SongRef], seed: int, test: float, valid: float) -> dict[str, list[SongRef]]:
    """Shuffles ``songs`` with ``seed`` and cuts them into splits."""
    songs = list(songs)
    random.Random(derive_seed(seed, "split")).shuffle(songs)
    nb_test, nb_valid = round(test * len(songs)), round(valid * len(songs))
    return {
        "test": songs[:nb_test],
        "valid": songs[nb_test : nb_test + nb_valid],
        "train": songs[nb_test + nb_valid :],
    }


def plan_tracks(
    songs: Sequence[SongRef],
    soundfonts: dict[str, Sequence[Path]],
    *,
    seed: int,
    duration: float = DURATION,
    excerpts: int = 1,
    test_fraction: float = TEST_FRACTION,
    valid_fraction: float = VALID_FRACTION,
    drum_kits: dict[str, Sequence[Path]] | None = None,
    production: bool = False,
    sung: bool = False,
) -> list[TrackPlan]:
    """Splits songs by split and draws each track's excerpt and parameters.

    MIDI files and procedural songs are split separately, so each split gets both kinds.
    Songs that cannot give a track (unreadable, a stem missing, too short) are skipped with a
    warning naming them.

    Args:
        songs: the songs.
        soundfonts: ``{split: soundfonts}``.
        seed: the run's seed.
        duration: seconds per track.
        excerpts: tracks per song.
        test_fraction: the fraction of songs for the test split.
        valid_fraction: the fraction of songs for the validation split.
        drum_kits: ``{split: Hydrogen drum kits}``: each track's drums are played by one drawn
            among them and the soundfont.
        production: give each track effect chains (the test split's reverb is a family
            training never hears).
        sung: sing the vocals of most tracks with the formant singer, mixed with the voice patch.

    Returns:
        The tracks, by split then song name.

    Raises:
        UmxError: a test soundfont or drum kit is also a training one, a split with songs has
            no soundfont, or no song can give a track.
    """
    drum_kits = drum_kits or {}
    for kind, sources in (("soundfont", soundfonts), ("drum kit", drum_kits)):
        shared = set(sources.get("test", ())) & {
            *sources.get("train", ()),
            *sources.get("valid", ()),
        }
        if shared:
            raise UmxError(f"{kind} {min(shared)} is used for both training and testing")
    splits: dict[str, list[SongRef]] = {split: [] for split in SPLITS}
    for procedural in (False, True):
        group = [song for song in songs if (song.path is None) == procedural]
        for split, chosen in _split(group, seed, test_fraction, valid_fraction).items():
            splits[split] += chosen
    plans = []
    for split, chosen in splits.items():
        if chosen and not soundfonts[split]:
            raise UmxError(f"no soundfont for the {split} split")
        for song in sorted(chosen, key=lambda song: song.name):
            plans += [
                _produce(plan, seed, drum_kits.get(split, ()), production, sung)
                for plan in _plan_song(song, split, soundfonts[split], seed, duration, excerpts)
            ]
    if not plans:
        raise UmxError(f"none of the {len(songs)} songs can be rendered (see the warnings)")
    return plans


def levers() -> tuple[ModuleType, ModuleType, ModuleType]:
    """The modules of the production levers: effects (:mod:`umx.data.production`), the drum
    sampler and the singer. They need scipy (the `train` extra), so they load only when a
    dataset uses them: the `umx` command itself starts without scipy.

    Raises:
        UmxError: scipy is not installed.
    """
    try:
        from umx.data import production, sampler, singer
    except ImportError as error:
        raise UmxError(
            f"drum kits, --production and --sung need scipy ({error}): pip install 'umx[train]'"
        ) from None
    return production, sampler, singer


def _produce(
    plan: TrackPlan, seed: int, drum_kits: Sequence[Path], production: bool, sung: bool
) -> TrackPlan:
    """``plan`` with its drum kit, effect chains and singer drawn (from a generator of their
    own, so that a dataset without them is the same as before they existed)."""
    if not (drum_kits or production or sung):
        return plan
    effects = levers()[0]
    rng = random.Random(derive_seed(seed, plan.name, "production"))
    kits = [None, *map(str, drum_kits)]
    family = effects.TEST_REVERB if plan.split == "test" else effects.TRAIN_REVERB
    return replace(
        plan,
        drum_kit=rng.choice(kits),
        production=effects.draw_production(rng, STEMS, family) if production else None,
        sung=round(rng.uniform(*SUNG_SHARE), 3) if sung and rng.random() < SUNG_CHANCE else 0.0,
        seed=rng.getrandbits(31),
    )


def _plan_song(
    song: SongRef,
    split: str,
    soundfonts: Sequence[Path],
    seed: int,
    duration: float,
    excerpts: int,
) -> list[TrackPlan]:
    """The tracks of one song, or none (with a warning) if it cannot give any."""
    label = song.path or f"procedural song {song.seed}"
    try:
        events = song.load()
    except UmxError as error:
        logger.warning("%s; skipping it", error)
        return []
    try:
        analysis = analyse(events)
    except UmxError as error:
        logger.warning("skipping %s: %s", label, error)
        return []
    plans = []
    for index in range(excerpts):
        rng = random.Random(derive_seed(seed, song.name, index))
        tempo = round(rng.uniform(*TEMPO_RANGE), 3)
        starts = valid_starts(analysis.activity, duration * tempo + 1)
        if not len(starts):
            logger.warning(
                "skipping %s: no %g-second passage where all four stems play", label, duration
            )
            return []
        plans.append(
            TrackPlan(
                name=f"{song.name}-{index:02d}",
                split=split,
                song=song,
                soundfont=str(rng.choice(soundfonts)),
                start=int(rng.choice(starts)) + round(rng.random(), 3),
                tempo=tempo,
                transpose=rng.randint(*TRANSPOSE_RANGE),
                revoice={
                    channel: rng.choice(REVOICE_PROGRAMS[stem])
                    for channel, stem in sorted(analysis.revoiced.items())
                },
                gains_db={stem: round(rng.uniform(*GAIN_RANGE_DB), 2) for stem in STEMS},
                pans={stem: round(rng.uniform(-PAN_RANGE, PAN_RANGE), 3) for stem in STEMS},
                peak_db=round(rng.uniform(*PEAK_RANGE_DB), 2),
            )
        )
    return plans


def check_root(root: Path, force: bool) -> None:
    """Refuses an output folder that holds a dataset (unless ``force``) or anything else.

    Raises:
        UmxError: ``root`` is a file, a non-empty folder that is not a dataset, or a dataset and
            ``force`` is false.
    """
    if not root.exists():
        return
    if not root.is_dir():
        raise UmxError(f"{root} is a file, not a folder")
    names = {path.name for path in root.iterdir()}
    if not names:
        return
    if not names <= DATASET_FILES:
        raise UmxError(f"{root} is not empty and holds no dataset; choose a new folder")
    if not force:
        raise UmxError(f"{root} already holds a dataset (use --force to replace it)")


def _setup_yaml(validation_tracks: list[str], sample_rate: int) -> str:
    """musdb's set-up file for the dataset, as JSON (which YAML reads)."""
    setup = {
        "sample_rate": float(sample_rate),
        "sources": {stem: f"{stem}.wav" for stem in STEMS},
        "mixture": "mixture.wav",
        "stem_ids": {"mixture": 0, "drums": 1, "bass": 2, "other": 3, "vocals": 4},
        "targets": {
            **{stem: {stem: 1} for stem in STEMS},
            "accompaniment": {"bass": 1, "drums": 1, "other": 1},
            "linear_mixture": {stem: 1 for stem in STEMS},
        },
        "validation_tracks": validation_tracks,
    }
    return json.dumps(setup, indent=2) + "\n"


def synthesize(
    root: str | Path,
    plans: Sequence[TrackPlan],
    *,
    duration: float = DURATION,
    sample_rate: int = int(SAMPLE_RATE),
    jobs: int = 1,
    force: bool = False,
    progress: bool = True,
    settings: dict | None = None,
) -> dict:
    """Renders planned tracks into a new dataset folder.

    ``root`` appears whole or not at all: tracks are rendered into a hidden folder beside it,
    which then takes its place. Tracks with a silent stem are skipped.

    Args:
        root: the dataset folder; it must not hold a dataset unless ``force``.
        plans: the tracks, from :func:`plan_tracks`.
        duration: seconds per track.
        sample_rate: samples per second.
        jobs: tracks rendered at once.
        force: replace a dataset already in ``root``.
        progress: show a progress bar.
        settings: recorded in ``synth.json`` as they are (the command's options).

    Returns:
        The contents of ``synth.json``: settings, songs per split, tracks with their levels.

    Raises:
        UmxError: ``root`` is refused, fluidsynth is missing or fails, or every track was
            skipped.
    """
    root = Path(root)
    check_root(root, force)
    check_fluidsynth()
    tracks = []
    with staged_folder(root) as stage:
        tasks = [
            (plan, duration, sample_rate, stage / _folder(plan.split) / plan.name) for plan in plans
        ]
        with contextlib.ExitStack() as stack:
            if jobs > 1:
                pool = stack.enter_context(multiprocessing.Pool(min(jobs, len(tasks))))
                results = pool.imap(_render_task, tasks)
            else:
                results = map(_render_task, tasks)
            bar = stack.enter_context(tqdm(total=len(tasks), unit="track", disable=not progress))
            for plan, levels in zip(plans, results, strict=True):
                bar.update()
                if levels is None:
                    logger.warning("skipped %s: a stem is silent", plan.name)
                else:
                    tracks.append({**asdict(plan), "levels_db": levels})
        if not tracks:
            raise UmxError("every track had a silent stem; nothing was written")
        manifest = {
            "umx_version": __version__,
            "settings": settings or {},
            "duration": duration,
            "sample_rate": sample_rate,
            "hours": round(len(tracks) * duration / 3600, 3),
            "songs": {
                split: sorted(
                    {track["song"]["name"] for track in tracks if track["split"] == split}
                )
                for split in SPLITS
            },
            "soundfonts": {
                split: sorted({track["soundfont"] for track in tracks if track["split"] == split})
                for split in SPLITS
            },
            "tracks": tracks,
        }
        (stage / "synth.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        valid = [track["name"] for track in tracks if track["split"] == "valid"]
        (stage / "setup.yaml").write_text(_setup_yaml(valid, sample_rate))
    counts = {split: sum(track["split"] == split for track in tracks) for split in SPLITS}
    logger.info(
        "wrote %d tracks (%.2f hours) to %s: %s",
        len(tracks),
        manifest["hours"],
        root,
        ", ".join(f"{count} {split}" for split, count in counts.items()),
    )
    return manifest


def _folder(split: str) -> str:
    """The folder of a split: validation tracks live in ``train/``, as in MUSDB18."""
    return "test" if split == "test" else "train"


def default_soundfonts(test: bool) -> list[Path]:
    """The installed default soundfonts for training, or for testing when ``test``.

    Raises:
        UmxError: none is installed, naming the package to install.
    """
    candidates = TEST_SOUNDFONTS if test else TRAIN_SOUNDFONTS
    installed = [path for path in candidates if path.is_file()]
    if not installed:
        package = SOUNDFONT_PACKAGES[candidates[0]]
        raise UmxError(f"no General MIDI soundfont found (apt-get install {package})")
    return installed


def render_example(
    path: str | Path,
    seed: int,
    *,
    duration: float = 15.0,
    soundfont: str | Path | None = None,
    sample_rate: int = int(SAMPLE_RATE),
    stems: bool = False,
    force: bool = False,
) -> list[Path]:
    """Renders an excerpt of the procedural song of ``seed``, with fades, to an audio file.

    The mixture goes to ``path`` (16-bit wav or flac) and, with ``stems``, each stem beside it
    as ``NAME.STEM.EXT``: the stems sum exactly to the mixture, and the same arguments give the
    same files.

    Args:
        path: the mixture's file.
        seed: the song and its rendering.
        duration: seconds.
        soundfont: the soundfont; by default the first installed training soundfont.
        sample_rate: samples per second.
        stems: also write the stems.
        force: overwrite existing files.

    Returns:
        The files written, mixture first.

    Raises:
        UmxError: ``path`` is not a .wav or .flac file, a file exists without ``force``, or
            fluidsynth or the soundfont is missing.
    """
    path = Path(path)
    if path.suffix.lower() not in (".wav", ".flac"):
        raise UmxError(f"{path}: the example is written as .wav or .flac")
    outputs = {"mixture": path}
    if stems:
        outputs |= {stem: path.with_name(f"{path.stem}.{stem}{path.suffix}") for stem in STEMS}
    existing = [str(output) for output in outputs.values() if output.exists()]
    if existing and not force:
        raise UmxError(f"{existing[0]} already exists (use --force to overwrite)")
    soundfont = check_soundfont(soundfont) if soundfont else default_soundfonts(test=False)[0]
    song = SongRef(name=f"procedural-{seed}", seed=seed, min_seconds=duration)
    plans = _plan_song(song, "example", [soundfont], seed, duration, excerpts=1)
    tracks = render_track(plans[0], duration, sample_rate, fade=FADE_SECONDS) if plans else None
    if tracks is None:
        raise UmxError(f"the procedural song of seed {seed} has a silent stem; try another seed")
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, output in outputs.items():
        audio = tracks[name]
        write_atomic(
            output, partial(write_pcm16, audio=audio, sample_rate=sample_rate, suffix=output.suffix)
        )
    return list(outputs.values())
