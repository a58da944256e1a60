"""Typed options, validated once where they are built: what to separate with
(`SeparationOptions`) and where and how stem files are written (`OutputOptions`).

The command line builds them (`umx.cli_options`), the batch workers from their job's settings;
the library below takes them and never sees the parsed command line. Importing this module does
not import torch (building options does, to check them).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path, PurePath

from umx.defaults import (
    AUTO,
    CLIP_POLICIES,
    DEFAULT_TEMPLATE,
    OVERLAP,
    SEGMENT,
    SUBTYPES,
    WIENER_WIN_LEN,
)
from umx.errors import UmxError, check_flag, check_number, check_path, check_targets, short
from umx.onnx.options import check_backend


@dataclass(frozen=True)
class SeparationOptions:
    """What separates and how: the model, its targets, the Wiener filter, the chunks, where it
    runs. Checked as a whole when built, before any model loads, with the messages of the
    command line (which spells the fields `--niter`, `--wiener-win-len`, ...).

    Attributes:
        model: a zoo name or a model directory (or an export folder); None for the default.
        targets: the targets to separate; None for all of the model's.
        niter: Wiener filter EM iterations.
        wiener_win_len: frames filtered at once; None (or 0, stored as None) for the whole
            segment.
        softmask: start the Wiener filter from ratio masks instead of the model magnitudes.
        residual: the name of an extra target, the mixture minus the targets; None for none.
        segment: the chunk length in seconds (`chunk_seconds` is what separates).
        overlap: the cross-fade between chunks, in seconds.
        whole_track: separate each input at once, ignoring `segment`.
        device: cpu, cuda, cuda:N, mps or auto.
        backend: torch or onnxruntime; None chooses (see `umx.onnx.options.check_backend`),
            and the built options hold the choice.
        quantize: int8 quantisation of the models (onnxruntime), or None.

    Raises:
        UmxError: a model that is no name or path, softmask or whole_track that is no bool,
            targets that are not a non-empty list, a residual name that is no safe file
            name, numbers out of range, an unknown device, or a backend,
            quantisation, device and model that do not go together.
    """

    model: str | None = None
    targets: tuple[str, ...] | None = None
    niter: int = 1
    wiener_win_len: int | None = WIENER_WIN_LEN
    softmask: bool = False
    residual: str | None = None
    segment: float = SEGMENT
    overlap: float = OVERLAP
    whole_track: bool = False
    device: str = AUTO
    backend: str | None = None
    quantize: str | None = None

    def __post_init__(self) -> None:
        # Imported here: torch is not needed to build a parser.
        from umx.devices import device_name, parse_device
        from umx.separator import check_options

        check_path("--model", self.model, optional=True, what="a model name or folder")
        check_flag("--whole-track", self.whole_track)
        object.__setattr__(self, "targets", check_targets(self.targets))
        object.__setattr__(self, "device", device_name(self.device))  # `GPU`: `cuda`
        if self.device != AUTO:
            parse_device(self.device)
        if self.wiener_win_len is not None:  # 0, the whole segment, is stored as None
            check_number("--wiener-win-len", self.wiener_win_len, minimum=0, integer=True)
        object.__setattr__(self, "wiener_win_len", self.wiener_win_len or None)
        check_options(
            niter=self.niter,
            wiener_win_len=self.wiener_win_len,
            segment=self.chunk_seconds,
            overlap=self.overlap,
            softmask=self.softmask,
            residual=self.residual,
        )
        backend = check_backend(self.backend, self.quantize, self.device, self.model)
        object.__setattr__(self, "backend", backend)

    @property
    def chunk_seconds(self) -> float | None:
        """The chunk length to separate with: None (the whole track) with `whole_track`."""
        return None if self.whole_track else self.segment

    @property
    def filter_options(self) -> dict[str, object]:
        """The keyword arguments of `umx.zoo.load_separator` that shape the separator's output:
        targets, niter, softmask, residual, wiener_win_len."""
        return {
            "targets": list(self.targets) if self.targets is not None else None,
            "niter": self.niter,
            "softmask": self.softmask,
            "residual": self.residual,
            "wiener_win_len": self.wiener_win_len,
        }


@dataclass(frozen=True)
class OutputOptions:
    """Where stem files go, named how, in which format, clipped how, and whether existing ones
    are replaced (the keyword arguments of `umx.api.separate_file` of the same names).

    Attributes:
        outdir: the output folder.
        filename: the path under `outdir`, a template of `umx.defaults.TEMPLATE_FIELDS`.
        ext: the file format (a key of `umx.defaults.SUBTYPES`).
        subtype: the sample format; None for the format's default.
        clip: what to do with stems beyond full scale (`umx.defaults.CLIP_POLICIES`).
        force: overwrite existing files.

    Raises:
        UmxError: an outdir that is no path, a filename that is no text, a force that is no
            bool, an unknown format, a subtype the format has not, or an unknown clip policy
            (none needs the FLOAT subtype).
    """

    outdir: Path = Path("separated")
    filename: str = DEFAULT_TEMPLATE
    ext: str = "wav"
    subtype: str | None = None
    clip: str = "rescale"
    force: bool = False

    def __post_init__(self) -> None:
        check_path("--outdir", self.outdir)
        check_flag("--force", self.force)
        if not isinstance(self.filename, str):
            raise UmxError(f"--filename must be a text template, not {short.repr(self.filename)}")
        object.__setattr__(self, "outdir", Path(self.outdir))
        if not isinstance(self.ext, str) or self.ext not in SUBTYPES:
            raise UmxError(f"--ext {self.ext!r} is no format umx writes: use {', '.join(SUBTYPES)}")
        written = template_format(self.filename) or self.ext
        if self.ext not in ("wav", written):  # wav, the default: not chosen
            raise ext_conflict(self.filename, written, self.ext)
        subtype = self.subtype or SUBTYPES[written][0]  # the default
        if subtype not in SUBTYPES[written]:
            allowed = ", ".join(SUBTYPES[written])
            whose = (
                f"{written}'s"
                if written == self.ext
                else f"{written}'s, the format --filename sets"
            )
            raise UmxError(f"--subtype {subtype!r} is not one of {whose}: use {allowed}")
        if self.clip not in CLIP_POLICIES or (self.clip == "none" and subtype != "FLOAT"):
            raise UmxError(
                f"--clip {self.clip!r}: use rescale or clamp (none only with the FLOAT subtype)"
            )

    def as_kwargs(self) -> dict[str, object]:
        """The options as keyword arguments of `umx.api.separate_file` (and `separate_stream`)."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


def template_format(filename: str) -> str | None:
    """The format a `--filename` template sets by its own extension (`{track}/{target}.mp3`:
    mp3), whatever its fields hold; None when `{ext}` or another field makes the extension, or
    it names no format umx writes (refused per stem by `umx.api.output_paths`)."""
    suffix = PurePath(filename).suffix.lower().lstrip(".")
    return suffix if suffix in SUBTYPES else None


def ext_conflict(filename: str, written: str, ext: str) -> UmxError:
    """The error for a `--filename` whose extension is another format than a `--ext` given."""
    return UmxError(
        f"--filename {filename!r} gives .{written} files, but --ext is {ext}: end the "
        "template with .{ext}, or leave out --ext"
    )
