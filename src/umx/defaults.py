"""Names and defaults that the command line shows in its help or checks while parsing.

This module imports nothing but the standard library, so that `umx --help`, `umx CMD --help`,
argument parsing and `umx --list-models` never load torch, numpy or soundfile (which take
seconds to import on a small machine). Each value belongs to the module named beside it, which
re-exports it; import it from there in code that has that module loaded anyway.
"""

from __future__ import annotations

import re
from pathlib import Path

# --- the music ----------------------------------------------------------------------------------
SOURCES = ("vocals", "drums", "bass", "other")
"""The four sources of MUSDB18, which the published models, the bundled ones and `umx synth`
separate or make, in this order."""

# --- umx.separator --------------------------------------------------------------------------------
SAMPLE_RATE = 44100.0
WIENER_WIN_LEN = 300
MAX_NITER = 100
"""The most EM iterations of the Wiener filter taken (the reference runs 1; 10**8 would run
for days on a one-second file)."""
SEGMENT = 30.0  # seconds per chunk in chunked mode
OVERLAP = 2.0  # seconds of cross-fade between chunks

# --- umx.api --------------------------------------------------------------------------------------
DEFAULT_TEMPLATE = "{track}/{target}.{ext}"
TEMPLATE_FIELDS = ("track", "trackext", "parent", "target", "ext")
"""The fields of `--filename`: the input's name without extension, its extension, the name of
its folder, the stem's name and the output extension."""
LONG_NAMES_HINT = "shorten --filename"
"""What to do about a stem's folder whose name is too long (`umx.folders.make_output_dirs`)."""

# --- umx.audio.writing ----------------------------------------------------------------------------
SUBTYPES = {
    "wav": ("PCM_16", "PCM_24", "FLOAT"),
    "flac": ("PCM_16", "PCM_24"),
    "mp3": ("MPEG_LAYER_III",),
}
"""Writable extensions and the libsndfile subtypes each accepts."""
CLIP_POLICIES = ("rescale", "clamp", "none")
"""How samples beyond [-1, 1] are handled when writing: see `umx.audio.AudioWriter`."""

# --- umx.devices ----------------------------------------------------------------------------------
AUTO = "auto"

# (--backend and --quantize: umx.onnx.options, which imports no torch either)

# --- umx.zoo and umx.modeldir ---------------------------------------------------------------------
DEFAULT_MODEL = "umxl"  # the reference's default published model
FALLBACK_MODEL = "umxsynth"  # bundled: what the default falls back to when umxl cannot be had
HASH_DIGITS = 8
HASHED_NAME = re.compile(rf"^(?P<target>.+)[-_](?P<hash>[0-9a-f]{{{HASH_DIGITS}}})\.pth$")
"""`<target>-<hash>.pth` or `<target>_<hash>.pth`, the hash being the start of the SHA-256."""
ACCOMPANIMENT_WORDS = ("karaoke", "instrumental", "accompaniment")
"""Words for the mixture without the vocals, which a newcomer may take for a target."""

# --- umx.stream.io --------------------------------------------------------------------------------
STREAM_MODEL = "umxsynth-rt"
"""The bundled causal model `umx stream` uses by default."""
DEFAULT_BLOCK = 1024
"""Samples per block read from the input."""
PCM_DTYPES = {"f32le": "<f4", "s16le": "<i2"}
"""Raw PCM sample formats, as numpy dtype strings: little-endian float32 in [-1, 1],
little-endian signed 16-bit."""

# --- umx.data -------------------------------------------------------------------------------------
MUSDB_SAMPLES_PER_TRACK = 64
DEFAULT_AUGMENTATIONS = ("gain", "channelswap")

# --- umx.synth ------------------------------------------------------------------------------------
SOUNDFONT_PACKAGES = {
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"): "fluid-soundfont-gm",
    Path("/usr/share/sounds/sf3/MuseScore_General_Lite.sf3"): "musescore-general-soundfont-small",
    Path("/usr/share/sounds/sf2/TimGM6mb.sf2"): "timgm6mb-soundfont",
}
"""The Debian General MIDI soundfonts umx knows, and the packages that install them."""
TRAIN_SOUNDFONTS = tuple(SOUNDFONT_PACKAGES)[:2]
TEST_SOUNDFONTS = tuple(SOUNDFONT_PACKAGES)[2:]
"""Default soundfonts: the test split's is held out from training."""

DURATION = 30.0
"""Seconds per track."""
MIN_DURATION = 2.0
"""The fewest seconds per track `umx synth` takes: excerpts start on whole seconds, and one of 1 s
often catches no sung note, which leaves the track with a silent stem."""
MAX_DURATION = 600.0
MAX_SONGS = 100_000
MAX_EXCERPTS = 100
"""The most seconds per track, procedural songs and tracks per song `umx synth` takes: past
them a typo renders for days or runs out of memory (a 10**12-second track), not a dataset."""
TEST_FRACTION = 0.2
VALID_FRACTION = 0.1

# --- umx.evaluate ---------------------------------------------------------------------------------
WIN = 1.0
"""BSSEval window, in seconds (sigsep's setting)."""
HOP = 1.0
"""BSSEval hop, in seconds (sigsep's setting)."""
BSSEVAL = ("fast", "museval")
"""The BSSEval v4 implementations: umx's own (`umx.evaluate.bsseval`, museval's numbers, faster)
and museval's, the reference."""
SUBSETS = ("train", "test")
BASELINES = ("irm", "ibm", "mix")

# --- umx.batch ------------------------------------------------------------------------------------
AUDIO_EXTENSIONS = (
    *("wav", "flac", "mp3", "ogg", "opus", "aif", "aiff", "m4a", "aac", "wma"),
    *("webm", "mka", "mkv", "mp4", "mov"),
)
"""The extensions a folder is searched for by default (case-insensitive): the formats
libsndfile reads, and the containers `umx separate` reads through ffmpeg (a video's audio)."""
JOB_DIRNAME = ".umx-job"
"""The job directory's name inside the output folder, when `--job` is not given."""

EXPORT_JSON = "umx-onnx.json"
"""The file that makes a folder an export (`umx export`): the STFT, rate, targets, graphs."""
