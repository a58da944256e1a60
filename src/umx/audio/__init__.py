"""Audio files in and out: reading, writing, resampling and the channel policy.

Every waveform here has the shape ``(nb_channels, nb_timesteps)``. The package knows nothing of
models: callers say how many channels they want and at which rate. Its modules, one job each
(their docstrings hold the details):

- :mod:`umx.audio.reading`: files to waveforms. libsndfile or ffmpeg decodes; regular files only,
  memory bounded, excerpts cut by ``int(seconds * sample_rate)``; the channel policy. How
  hostile input files are treated.
- :mod:`umx.audio.blocks`: files to waveforms block by block, as reading gives them whole, so
  that a long input is never held whole (``umx separate``'s chunks); the window of blocks a
  chunk takes.
- :mod:`umx.audio.headers`: the lengths files declare, read from their headers (WAV, RF64, BW64
  and AIFF chunks, MPEG frames and Xing tags): the truncation policy, format by format; chained
  Ogg and joined mp3 files, which ffmpeg decodes whole.
- :mod:`umx.audio.regular`: only regular files are opened (no pipes, devices or sockets).
- :mod:`umx.audio.resampling`: soxr resampling, of a whole signal or block by block.
- :mod:`umx.audio.writing`: waveforms to files: wav, flac and mp3 (libsndfile or ffmpeg), clip
  policies, written under hidden temporary names and renamed into place.
- :mod:`umx.audio.samples`: what counts as audio (rates, finite samples within ±10,000), the
  checks reading, the Python API and the stream share.
- :mod:`umx.audio.messages`: printable paths and the one-line errors reading and writing share.

The public names are re-exported here: ``from umx.audio import read_audio``.
"""

from umx.audio.blocks import BLOCK_FRAMES, AudioBlocks, BlockWindow
from umx.audio.messages import display_path, io_errors
from umx.audio.reading import (
    MAX_CHANNELS,
    AudioFileInfo,
    audio_info,
    match_channels,
    read_audio,
    read_frames,
    seconds_to_frames,
)
from umx.audio.resampling import RESAMPLE_QUALITY, StreamResampler, resample
from umx.audio.samples import MAX_SAMPLE, check_rate, check_samples, float_samples, peak
from umx.audio.writing import (
    BLOCK_SECONDS,
    CLIP_POLICIES,
    DEFAULT_SUBTYPE,
    FFMPEG_MP3_QUALITY,
    NAME_MAX,
    RESCALE_PEAK,
    SUBTYPES,
    AudioWriter,
    WriteReport,
    audio_formats,
    finish_together,
    leftover_temporaries,
    write_audio,
)

__all__ = [
    "BLOCK_FRAMES",
    "BLOCK_SECONDS",
    "CLIP_POLICIES",
    "DEFAULT_SUBTYPE",
    "FFMPEG_MP3_QUALITY",
    "MAX_CHANNELS",
    "MAX_SAMPLE",
    "NAME_MAX",
    "RESAMPLE_QUALITY",
    "RESCALE_PEAK",
    "SUBTYPES",
    "AudioBlocks",
    "AudioFileInfo",
    "AudioWriter",
    "BlockWindow",
    "StreamResampler",
    "WriteReport",
    "audio_formats",
    "audio_info",
    "check_rate",
    "check_samples",
    "display_path",
    "finish_together",
    "float_samples",
    "io_errors",
    "leftover_temporaries",
    "match_channels",
    "peak",
    "read_audio",
    "read_frames",
    "resample",
    "seconds_to_frames",
    "write_audio",
]
