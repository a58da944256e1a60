"""A soundfile-backed stand-in for the few `torchaudio` calls openunmix 1.3.0 makes.

openunmix imports torchaudio only for file I/O (and for resampling, which the benchmark never
needs: its signals are at the models' rate). Installing the real torchaudio would pull a second
torch build, so the benchmark puts this package on the reference's `PYTHONPATH` instead.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import soundfile as sf
import torch

__version__ = "0.0-umx-benchmark-stand-in"
_backend = "soundfile"


def set_audio_backend(backend: str | None) -> None:
    global _backend
    _backend = backend or "soundfile"


def get_audio_backend() -> str:
    return _backend


def info(path: str) -> SimpleNamespace:
    meta = sf.info(str(path))
    return SimpleNamespace(
        sample_rate=meta.samplerate, num_frames=meta.frames, num_channels=meta.channels
    )


def load(path: str, frame_offset: int = 0, num_frames: int = -1, **_: object):
    """`(channels, frames)` float32 tensor and the sample rate, as torchaudio.load returns."""
    stop = None if num_frames < 0 else frame_offset + num_frames
    data, rate = sf.read(str(path), start=frame_offset, stop=stop, dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(data.T)), rate


def save(path: str, src: torch.Tensor, sample_rate: float, **_: object) -> None:
    """Write `(channels, frames)` (or `(frames,)`) as 32-bit float, torchaudio's default."""
    data = src.detach().cpu().numpy()
    data = data.T if data.ndim == 2 else data
    sf.write(str(path), data, int(sample_rate), subtype="FLOAT")


class _Resample:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("the torchaudio stand-in does not resample")


transforms = SimpleNamespace(Resample=_Resample)
