"""A drum sampler that plays General MIDI drum notes with a recorded Hydrogen drum kit.

Debian's ``hydrogen-drumkits`` and ``hydrogen-data`` ship drum kits recorded with microphones
as Hydrogen folders: a ``drumkit.xml`` naming the kit's instruments (kick, snare, hi-hat, ...)
and, for each, one or more samples, each a *layer* for a range of velocities. :func:`load_kit`
reads such a folder; :func:`play_drums` plays the notes of a song's drum channel with it:

- each GM drum note (35-81) names a kind of drum (kick, snare, closed hat, low tom, crash, ...);
  the kit's instruments are given kinds from their names, and a note whose kind the kit lacks
  falls back to a near kind (a pedal hat to the closed hat, a ride to the crash, ...) or is
  left out;
- the layer is the one whose velocity range holds the note's velocity (``velocity / 127``);
  when several do, one is drawn (round robin);
- the hit is scaled by the velocity and the layer's and instrument's gains and placed, from the
  note's start, in the stereo field at a position drawn for each instrument of the kit.
"""

from __future__ import annotations

import functools
import math
import random
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from umx.audio import audio_info, read_frames
from umx.errors import UmxError, display_path, os_reason
from umx.messages import shown
from umx.synth.midi import NOTE_OFF, NOTE_ON, Song, TempoMap

HYDROGEN_KITS = Path("/usr/share/hydrogen/data/drumkits")
"""Where Debian's hydrogen-drumkits and hydrogen-data install their kits."""

GM_KINDS = {
    35: "kick", 36: "kick", 37: "stick", 38: "snare", 39: "clap", 40: "snare",
    41: "tom_low", 42: "hat_closed", 43: "tom_low", 44: "hat_pedal", 45: "tom_mid",
    46: "hat_open", 47: "tom_mid", 48: "tom_high", 49: "crash", 50: "tom_high", 51: "ride",
    52: "crash", 53: "bell", 54: "tambourine", 55: "crash", 56: "cowbell", 57: "crash",
    59: "ride",
}  # fmt: skip
"""The kind of drum each General MIDI percussion note plays."""
FALLBACKS = {
    "stick": ("snare",), "clap": ("snare",), "hat_pedal": ("hat_closed",),
    "hat_open": ("hat_closed",), "hat_closed": ("hat_pedal", "hat_open"),
    "tom_low": ("tom_mid", "tom_high"), "tom_mid": ("tom_low", "tom_high"),
    "tom_high": ("tom_mid", "tom_low"), "ride": ("crash", "bell"), "crash": ("ride",),
    "bell": ("ride",),
}  # fmt: skip
"""Kinds to play instead when the kit has none of a note's kind."""
NAME_KINDS = (
    ("hat_pedal", r"(hat|hh).*(pedal|foot)|(pedal|foot).*(hat|hh)"),
    ("hat_open", r"(hat|hh).*open|open.*(hat|hh)"),
    ("hat_closed", r"hat|hh"),
    ("kick", r"kick|bass ?drum|\bbd\b"),
    ("stick", r"stick|rim ?click|rim$"),
    ("snare", r"snare|\bsd\b"),
    ("clap", r"clap"),
    ("tom_low", r"(floor|low|lo)\b.*tom|tom.*(floor|low|lo\b|3)"),
    ("tom_high", r"(high|hi)\b.*tom|tom.*(high|hi\b|1)"),
    ("tom_mid", r"tom"),
    ("cowbell", r"cowbell"),
    ("bell", r"bell"),
    ("ride", r"ride"),
    ("crash", r"crash|splash|china|cymbal"),
    ("tambourine", r"tambourine"),
)
"""An instrument's kind: the first whose pattern its lower-case name matches."""
KIT_PAN = 0.6
"""Instruments are placed at a balance drawn in ±KIT_PAN (kicks and snares near the centre)."""
REQUIRED = ("kick", "snare", "hat_closed")
"""A kit needs these kinds, the backbone of most grooves."""
CENTRED = frozenset(("kick", "snare", "stick", "clap"))
MAX_HIT_SECONDS = 4.0
"""Samples are cut after this many seconds (a long cymbal tail)."""
MAX_GAIN = 100.0
"""The largest gain or volume a kit may give (40 dB; Hydrogen's own stay below 10)."""


@dataclass(frozen=True)
class Layer:
    """One sample of an instrument, for velocities ``low`` to ``high`` (0-1)."""

    path: Path
    low: float
    high: float
    gain: float


@dataclass(frozen=True)
class Kit:
    """A drum kit: its name and ``{kind: [layers of each instrument of that kind]}``."""

    name: str
    instruments: dict[str, list[list[Layer]]]


def _tag(element: ElementTree.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def _child(element: ElementTree.Element, name: str, default: str = "") -> str:
    for child in element:
        if _tag(child) == name:
            return (child.text or default).strip()
    return default


def kind_of(name: str) -> str | None:
    """The kind of drum an instrument named ``name`` is, or None."""
    lowered = name.lower()
    return next((kind for kind, pattern in NAME_KINDS if re.search(pattern, lowered)), None)


@functools.lru_cache(maxsize=32)
def load_kit(folder: str | Path) -> Kit:
    """Reads a Hydrogen drum kit: ``folder/drumkit.xml`` and the samples it names.

    Instruments whose kind cannot be told from their name, and layers whose sample file is
    missing, are left out.

    Raises:
        UmxError: the folder has no readable drumkit.xml, a gain, volume or velocity bound
            that is not a number in range, a sample named outside the folder, or no usable
            instrument.
    """
    folder = Path(folder)
    xml = folder / "drumkit.xml"
    try:
        root = ElementTree.parse(xml).getroot()
    except (FileNotFoundError, NotADirectoryError):
        raise UmxError(
            f"{display_path(folder)} is not a Hydrogen drum kit: it holds no drumkit.xml"
        ) from None
    except (OSError, ElementTree.ParseError) as error:
        reason = os_reason(error) if isinstance(error, OSError) else f"drumkit.xml: {error}"
        raise UmxError(f"{display_path(folder)} is not a Hydrogen drum kit ({reason})") from None
    instruments: dict[str, list[list[Layer]]] = {}
    for element in root.iter():
        if _tag(element) != "instrument":
            continue
        kind = kind_of(_child(element, "name"))
        gain = _number(xml, element, "gain", 0, MAX_GAIN) * _number(
            xml, element, "volume", 0, MAX_GAIN
        )
        layers = []
        for layer in element.iter():
            if _tag(layer) == "layer":
                path = _sample_path(xml, _child(layer, "filename"))
                low, high = _number(xml, layer, "min", default=0), _number(xml, layer, "max")
                if path.is_file():
                    layers.append(
                        Layer(path, low, high, gain * _number(xml, layer, "gain", 0, MAX_GAIN))
                    )
        if not layers and (path := _sample_path(xml, _child(element, "filename"))).is_file():
            layers.append(Layer(path, 0.0, 1.0, gain))
        if kind and layers:
            instruments.setdefault(kind, []).append(layers)
    missing = [kind for kind in REQUIRED if kind not in instruments]
    if missing:
        raise UmxError(f"{display_path(xml)} has no {' or '.join(missing)} umx can play")
    return Kit(_child(root, "name") or folder.name, instruments)


def _number(
    xml: Path,
    element: ElementTree.Element,
    name: str,
    minimum: float = -math.inf,
    maximum: float = math.inf,
    default: float = 1.0,
) -> float:
    """The number in ``element``'s child ``name`` (``default`` when absent or empty).

    Raises:
        UmxError: it is not a finite number within [minimum, maximum].
    """
    text = _child(element, name)
    try:
        value = float(text) if text else default
    except ValueError:
        value = math.nan
    if not minimum <= value <= maximum or not math.isfinite(value):
        bounds = f"from {minimum:g} to {maximum:g}" if math.isfinite(maximum) else "a number"
        raise UmxError(
            f"{display_path(xml)}: a <{name}> of '{shown(text, 40)}' in <{_tag(element)}> "
            f"is not {bounds}"
        )
    return value


def _sample_path(xml: Path, name: str) -> Path:
    """The sample file a kit names, which must lie in the kit's folder.

    Raises:
        UmxError: ``name`` is absolute or goes up a folder.
    """
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise UmxError(
            f"{display_path(xml)} names the sample '{shown(name, 80)}' outside the kit's folder"
        )
    return xml.parent / name


@functools.lru_cache(maxsize=512)
def _sample(path: Path, sample_rate: int) -> np.ndarray:
    """``(nb_channels=2, nb_samples)`` float64: a sample file at ``sample_rate``, in stereo.

    Raises:
        UmxError: the file is not audio umx reads (see :func:`umx.audio.read_frames`).
    """
    rate = int(audio_info(path).sample_rate)
    frames, _ = read_frames(path, 0, int(MAX_HIT_SECONDS * rate))
    audio = frames.numpy().astype(np.float64)
    if rate != sample_rate:
        divisor = math.gcd(rate, sample_rate)
        audio = resample_poly(audio, sample_rate // divisor, rate // divisor, axis=1)
    if audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
    return audio[:2]


def choose_layer(layers: list[Layer], velocity: int, rng: random.Random) -> Layer:
    """The layer for a MIDI ``velocity`` (1-127): one drawn among those whose range holds it,
    else the one whose range is nearest."""
    level = velocity / 127
    fitting = [layer for layer in layers if layer.low <= level <= layer.high]
    if fitting:
        return rng.choice(fitting)
    return min(layers, key=lambda layer: min(abs(layer.low - level), abs(layer.high - level)))


def _instrument(kit: Kit, key: int) -> tuple[str, int] | None:
    """The kind and index of the kit's instrument that plays GM drum note ``key``."""
    kind = GM_KINDS.get(key)
    if kind is None:
        return None
    for candidate in (kind, *FALLBACKS.get(kind, ())):
        if candidate in kit.instruments:
            return candidate, key % len(kit.instruments[candidate])
    return None


def play_drums(
    song: Song, kit: Kit, nb_samples: int, sample_rate: int, seed: int, channel: int = 9
) -> np.ndarray:
    """Plays the notes of ``song``'s drum ``channel`` with ``kit``.

    Args:
        song: the song (its notes on other channels are ignored).
        kit: the drum kit.
        nb_samples: the length of the result.
        sample_rate: samples per second.
        seed: draws the instruments' stereo positions and the round-robin layers.
        channel: the drum channel (9, channel 10 counted from 1).

    Returns:
        ``(nb_channels=2, nb_samples)`` float64.
    """
    rng = random.Random(seed)
    tempo = TempoMap(song)
    pans = {
        (kind, index): rng.uniform(-KIT_PAN, KIT_PAN) * (0.2 if kind in CENTRED else 1.0)
        for kind, instruments in sorted(kit.instruments.items())
        for index in range(len(instruments))
    }
    out = np.zeros((2, nb_samples))
    for event in song.events:
        if event.channel != channel or not event.is_note_on:
            continue
        found = _instrument(kit, event.data[0])
        start = round(tempo.seconds(event.tick) * sample_rate)
        if found is None or start >= nb_samples:
            continue
        layer = choose_layer(kit.instruments[found[0]][found[1]], event.data[1], rng)
        hit = _sample(layer.path, sample_rate)[:, : nb_samples - start]
        angle = (pans[found] + 1) * math.pi / 4
        balance = math.sqrt(2) * np.array([[math.cos(angle)], [math.sin(angle)]])
        out[:, start : start + hit.shape[1]] += hit * balance * layer.gain * event.data[1] / 127
    return out


def note_events(
    song: Song, channels: frozenset[int] | None = None
) -> list[tuple[float, float, int, int]]:
    """The notes of ``song`` as ``(start seconds, end seconds, key, velocity)``, by start.

    Args:
        song: the song.
        channels: only the notes of these channels (all when None).
    """
    tempo = TempoMap(song)
    sounding: dict[tuple[int, int], tuple[int, int]] = {}
    notes = []
    for event in song.events:
        if event.channel is None or (channels is not None and event.channel not in channels):
            continue
        key = (event.channel, event.data[0]) if event.kind in (NOTE_ON, NOTE_OFF) else None
        if key is None:
            continue
        if key in sounding and (event.is_note_off or event.is_note_on):
            begin, velocity = sounding.pop(key)
            notes.append((tempo.seconds(begin), tempo.seconds(event.tick), key[1], velocity))
        if event.is_note_on:
            sounding[key] = (event.tick, event.data[1])
    for (_, pitch), (begin, velocity) in sounding.items():
        notes.append((tempo.seconds(begin), tempo.seconds(song.end_tick), pitch, velocity))
    return sorted(notes)
