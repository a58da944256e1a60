"""Waveform mixture → waveform stems: STFT, the target models, Wiener filtering, inverse STFT."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from umx.audio.blocks import BlockWindow
from umx.audio.samples import check_samples, float_samples, peak
from umx.defaults import (
    ACCOMPANIMENT_WORDS,
    MAX_NITER,
    OVERLAP,
    SAMPLE_RATE,
    SEGMENT,
    WIENER_WIN_LEN,
)
from umx.errors import UmxError, check_flag, check_number, check_target_name
from umx.filtering import wiener
from umx.model import OpenUnmix
from umx.transforms import N_FFT, N_HOP, Spectrogram, check_stft, istft, magnitude, stft


def check_options(
    *,
    niter: int = 1,
    wiener_win_len: int | None = WIENER_WIN_LEN,
    segment: float | None = SEGMENT,
    overlap: float = OVERLAP,
    softmask: bool = False,
    residual: str | None = None,
) -> None:
    """Refuse separation options that make no sense (NaN, infinite, negative, zero, fractions),
    a `softmask` that is not a bool (the text "false" is true in Python), and a `residual` name
    that is no safe file name (`check_target_name`; None, no residual, passes).

    Raises:
        UmxError: naming the option (as the command line spells it) and the value.
    """
    check_number("--niter", niter, minimum=0, maximum=MAX_NITER, integer=True)
    check_flag("--softmask", softmask)
    if residual is not None:
        check_target_name(residual, "--residual")
    if wiener_win_len is not None:
        check_number("--wiener-win-len", wiener_win_len, above=0, integer=True)
    if segment is not None:
        check_number("--segment", segment, above=0)
    check_number("--overlap", overlap, minimum=0)
    if segment is not None and overlap > segment / 2:
        raise UmxError(
            f"--overlap ({overlap:g} s) must be at most half of --segment ({segment:g} s), "
            f"or every sample is separated many times over: give --overlap {segment / 2:g} or less"
        )


MIN_SEGMENT_WINDOWS = 4
"""The fewest STFT windows (`n_fft` samples) a chunk may span. Shorter chunks are mostly the
STFT's padding and separate into noise: with umxsynth (n_fft 4096 at 44.1 kHz) on a 12 s
mixture, the median difference from whole-track stems was 41 % at 0.05 s chunks, 31 % at
0.1 s, 24 % at 0.2 s, 18 % at 0.5 s and 1 s, 16 % at 2 s (the models' context, which chunks
always cut, accounts for the rest); the bound, 0.37 s for that model, is where it levels off."""

AUDIBLE = 1e-5
"""A mixture peaking above this (-100 dBFS) is audible."""
SILENT = 1e-6
"""Sources peaking at most this fraction of an audible mixture's peak (-120 dB) are silent."""
UNSTABLE = 10.0
"""Sources peaking more than this many times above their mixture (20 dB) come from a Wiener
filter that diverged, not from the music: sources that cancel in a mixture reach a few times
its peak (at most 2 measured with the bundled models on full-scale noise and tones), where the
causal filter of a stream of clipped full-scale noise at `--niter 6` gave 27 in its first
frame, and one of a 0 dBFS tone at `--niter 8` 3e9."""


def decibels_above(separated_peak: float, mix_peak: float) -> float | None:
    """How far, in dB, sources peaking at `separated_peak` lie above a mixture peaking at
    `mix_peak` when that is more than `UNSTABLE` allows; None when it is not."""
    if mix_peak > 0 and separated_peak > UNSTABLE * mix_peak:
        return 20 * math.log10(separated_peak / mix_peak)
    return None


def _check_rest_of(targets: list[str], residual: str | None) -> None:
    """Refuse a residual named as the instrumental (`--residual instrumental`) beside other
    targets than the vocals: it holds only what they leave of the mix.

    Raises:
        UmxError: saying to give `--two-stems vocals` instead.
    """
    name = (residual or "").lower()
    if (name in ACCOMPANIMENT_WORDS or name == "no_vocals") and set(targets) - {"vocals"}:
        raise UmxError(
            f"--residual {residual} beside {', '.join(targets)} would hold only what they leave "
            "of the mix, not an instrumental: give --two-stems vocals, or another --residual"
        )


class Separator(nn.Module):
    """Separate a waveform mixture into one waveform per target.

    Args:
        target_models: one spectrogram model per target name, all of the same STFT.
        sample_rate: rate of the audio the models were trained on.
        n_fft, n_hop: STFT size and hop.
        nb_channels: channels the models see (1 or 2). A one-channel separator also separates
            stereo mixtures as the reference does: the models see the mean of the channels'
            magnitudes and the Wiener filter applies their estimates to each channel, so the
            stems keep the mixture's channels.
        niter: Wiener EM iterations; 0 uses the model magnitudes with the mixture's phase. A
            single target is filtered against the rest of the mixture, which only `residual`
            adds as a stem (see `umx.filtering.needs_rest`).
        softmask: start the Wiener filter from ratio masks.
        residual: name of an extra target, the mixture minus the other targets; none if None.
            It may not name a target of the model, selected or not.
        wiener_win_len: frames filtered at once (bounds memory); whole track if None.
        model_targets: all the targets of the model `target_models` were selected from, in its
            order; those of `target_models` if None.

    Raises:
        UmxError: bad STFT, rate, channels or filtering options, no target models, or a
            residual named like a target of the model.

    Attributes:
        model_name: what the models were loaded from (a zoo name or a directory), set by
            `umx.zoo.load_separator`; None for a separator built by hand.
        model_targets: all the targets of the model, selected or not (see the argument).
    """

    def __init__(
        self,
        target_models: Mapping[str, OpenUnmix],
        *,
        sample_rate: float = SAMPLE_RATE,
        n_fft: int = N_FFT,
        n_hop: int = N_HOP,
        nb_channels: int = 2,
        niter: int = 1,
        softmask: bool = False,
        residual: str | None = None,
        wiener_win_len: int | None = WIENER_WIN_LEN,
        model_targets: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        check_stft(n_fft, n_hop)
        check_number("the sample rate", sample_rate, above=0)
        check_options(
            niter=niter, wiener_win_len=wiener_win_len, softmask=softmask, residual=residual
        )
        check_number("nb_channels", nb_channels, integer=True)
        if nb_channels not in (1, 2):
            raise UmxError(f"a separator works on 1 or 2 channels, not {nb_channels!r}")
        if not target_models:
            raise UmxError("a separator needs at least one target model")
        model_targets = list(target_models) if model_targets is None else list(model_targets)
        if residual is not None and residual in {*target_models, *model_targets}:
            raise UmxError(
                f"--residual {residual} is already a target of the model: name the rest of the "
                "mix otherwise (--residual rest, say)"
            )
        _check_rest_of(list(target_models), residual)
        self.target_models = nn.ModuleDict(target_models)
        self.sample_rate = float(sample_rate)
        self.n_fft = n_fft
        self.n_hop = n_hop
        self.nb_channels = int(nb_channels)
        self.niter = niter
        self.softmask = softmask
        self.residual = residual
        self.wiener_win_len = wiener_win_len
        self.model_targets = model_targets
        self.model_name: str | None = None

    @property
    def targets(self) -> list[str]:
        """Names of the separated sources, in output order (the residual last)."""
        return list(self.target_models) + ([self.residual] if self.residual is not None else [])

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type the separator computes in: its weights', float32 (or float64
        after `.double()`).

        Raises:
            UmxError: another type (`.half()`): the STFT does not compute in it.
        """
        dtype = next(self.parameters()).dtype
        if dtype not in (torch.float32, torch.float64):
            raise UmxError(
                f"the separator's weights are {dtype}, in which the STFT does not compute: "
                "call separator.float() first"
            )
        return dtype

    def check_ready(self) -> torch.dtype:
        """Refuse a separator that would give other stems than its evaluation mode's: one in
        training mode, whose BatchNorm layers would normalise with the mixture's statistics
        (and overwrite their running statistics) and whose dropout would drop features. Only
        layers that behave differently count, so a separator built from frozen models (see
        `OpenUnmix.freeze`) is ready whatever its own mode. It is refused rather than switched
        to evaluation mode, which would change it for the other threads using it.

        Returns:
            the separator's `dtype`, in which the mixture is to be given.

        Raises:
            UmxError: saying to call `.eval()`; or the weights' type is refused (`dtype`).
        """
        if any(map(_trains, self.modules())):
            raise UmxError(
                "the separator is in training mode, in which its BatchNorm and dropout layers "
                "change the stems (and the BatchNorm statistics): call separator.eval() first"
            )
        return self.dtype

    def check_input(self, audio: object) -> Tensor:
        """A mixture given to `forward`, `separate` or `iter_chunks`, checked as `umx.separate`
        checks its audio, with the separator (`check_ready`).

        Args:
            audio: `(nb_samples, nb_channels, nb_timesteps)`, a tensor or numpy array of real
                floating-point samples, with the separator's channels, or stereo for a
                one-channel separator (see `channels_for`), at its sample rate.

        Returns:
            the mixture as a tensor of the separator's `dtype`, on its own device (a numpy
            array's on the CPU).

        Raises:
            TypeError: `audio` holds no real floating-point samples (`float_samples`).
            UmxError: a wrong shape, samples that are not audio (`check_samples`: NaN,
                infinite or beyond ±10,000), or a separator that is not ready.
        """
        audio = float_samples(audio, "audio")
        if audio.dim() != 3 or audio.shape[1] not in (1, 2):
            raise UmxError(
                "the mixture must be (nb_samples, nb_channels, nb_timesteps) with 1 or 2 "
                f"channels, got shape {tuple(audio.shape)}"
            )
        if audio.shape[1] != self.channels_for(audio.shape[1]):
            raise UmxError(
                f"the model separates {self.nb_channels}-channel audio, got {audio.shape[1]}"
            )
        dtype = self.check_ready()
        check_samples(audio, 0.0, self.sample_rate, "audio")
        return audio.to(dtype)

    @property
    def covers_mixture(self) -> bool:
        """Whether the model's targets share the mixture out among themselves: two targets or
        more through the Wiener filter (`niter` >= 1), without a residual. Then silence in
        every stem means the model gives nothing. One target alone, raw model estimates, or
        targets beside a residual (which takes what they leave) may rightly be silent: an
        instrumental has no vocals, and its rest is the whole mixture."""
        return self.residual is None and len(self.target_models) >= 2 and self.niter >= 1

    def check_stems(self, mix_peak: float, separated_peak: float, source: str) -> None:
        """Refuse stems that are not a result: NaN or infinite samples (`check_finite`), sources
        far louder than their mixture (`UNSTABLE`: a diverged filter), or silence in every
        source from audible input where the sources should add up to it (`covers_mixture`: the
        models give nothing). Such stems would pass for a result.

        Args:
            mix_peak: the largest absolute sample of the mixture.
            separated_peak: the largest absolute sample of all separated sources (NaN if one
                is NaN, see `umx.audio.samples.peak`).
            source: how the user knows the input (the message starts with it).

        Raises:
            UmxError: the sources hold NaN or infinite samples, peak `UNSTABLE` times above
                the mixture, or the mixture peaks above `AUDIBLE` and they stay `SILENT` below
                it.
        """
        self.check_finite(separated_peak, source)
        above = decibels_above(separated_peak, mix_peak)
        if above is not None:
            raise UmxError(
                f"{source}: the stems came out {above:.0f} dB above the input: {self._model} or "
                "its options give no usable result (a Wiener filter unstable on this input: try "
                "a smaller --niter)"
            )
        if self.covers_mixture and mix_peak > AUDIBLE and separated_peak <= mix_peak * SILENT:
            raise UmxError(
                f"{source}: every stem came out silent from audible input: {self._model} gives "
                "nothing (are its weights broken?)"
            )

    def check_finite(self, separated_peak: float, source: str) -> None:
        """Refuse stems (or a piece of them) whose largest absolute sample, `separated_peak`,
        is NaN or infinite: from broken weights or an unstable filter.

        Raises:
            UmxError: naming `source`, the model and what to try.
        """
        if not math.isfinite(separated_peak):
            raise UmxError(
                f"{source}: the stems came out with NaN or infinite samples: {self._model} or "
                "its options give no usable result (broken weights, or a Wiener filter unstable "
                "on this input: try a smaller --niter)"
            )

    @property
    def _model(self) -> str:
        """How messages name the model."""
        return f"the model {self.model_name}" if self.model_name else "the model"

    def check_segment(self, segment: float | None) -> None:
        """Refuse chunks shorter than `MIN_SEGMENT_WINDOWS` STFT windows (None, the whole track,
        passes).

        Raises:
            UmxError: naming `--segment`, the shortest segment and why.
        """
        shortest = MIN_SEGMENT_WINDOWS * self.n_fft / self.sample_rate
        if segment is not None and segment < shortest:
            raise UmxError(
                f"--segment {segment:g} s is too short for this model: a chunk must span "
                f"{MIN_SEGMENT_WINDOWS} STFT windows ({shortest:.3g} s, n_fft {self.n_fft} at "
                f"{self.sample_rate:g} Hz), or it separates into noise; give at least "
                f"{math.ceil(shortest * 100) / 100:g}"
            )

    def channels_for(self, nb_channels: int) -> int:
        """The channel count this separator works on for a mixture of `nb_channels` (1 or 2):
        stereo separators take stereo (mono is duplicated); mono ones keep the mixture's."""
        return nb_channels if self.nb_channels == 1 else self.nb_channels

    def forward(self, audio: Tensor) -> Tensor:
        """Separate a whole mixture at once, as the reference implementation does.

        Args:
            audio: mixture, `(nb_samples, nb_channels, nb_timesteps)`, checked by
                `check_input`, on the separator's device.

        Returns:
            stems, `(nb_samples, nb_targets, nb_channels, nb_timesteps)`, in the separator's
            `dtype`.

        Raises:
            TypeError, UmxError: the mixture is refused (`check_input`), or the stems are not
                a result (`check_stems`: NaN or infinite samples, or silence from audio).
        """
        audio = self.check_input(audio)
        stems = self._whole(audio)
        self.check_stems(peak(audio), peak(stems), "audio")
        return stems

    def _whole(self, audio: Tensor) -> Tensor:
        """`forward` without its checks: `(nb_samples, nb_channels, nb_timesteps)` →
        `(nb_samples, nb_targets, nb_channels, nb_timesteps)`."""
        nb_timesteps = audio.shape[-1]
        # Reflect padding needs more than n_fft // 2 samples: zero-pad short inputs.
        if nb_timesteps <= self.n_fft // 2:
            audio = F.pad(audio, (0, self.n_fft // 2 + 1 - nb_timesteps))

        mix_stft = stft(audio, self.n_fft, self.n_hop)
        # A one-channel model sees the mean of the channels' magnitudes (as the reference).
        mix_mag = magnitude(mix_stft, mono=self.nb_channels == 1)
        # (nb_samples, nb_frames, nb_bins, nb_channels): a view, as the EM reads it.
        mix_stft = mix_stft.permute(0, 3, 2, 1)
        nb_samples, nb_frames, nb_bins, nb_channels = mix_stft.shape
        # Stacked in the models' own memory order, (nb_targets, nb_frames, nb_samples,
        # nb_channels, nb_bins), then viewed as (nb_samples, nb_frames, nb_bins, nb_channels,
        # nb_targets) for the Wiener filter: bins stay innermost in memory, as the EM reads them.
        magnitudes = torch.stack(
            [model(mix_mag).permute(3, 0, 1, 2) for model in self.target_models.values()]
        ).permute(2, 1, 4, 3, 0)
        del mix_mag

        # The stems' spectra are stored frames-then-bins, the layout the inverse STFT reads
        # without a copy: (nb_samples, nb_sources, nb_channels, nb_frames, nb_bins).
        stems = mix_stft.new_empty(nb_samples, len(self.targets), nb_channels, nb_frames, nb_bins)
        win_len = self.wiener_win_len or nb_frames
        for sample in range(nb_samples):
            for start in range(0, nb_frames, win_len):
                frames = slice(start, start + win_len)
                wiener(
                    magnitudes[sample, frames],
                    mix_stft[sample, frames],
                    niter=self.niter,
                    softmask=self.softmask,
                    residual=self.residual is not None,
                    out=stems[sample, :, :, frames].permute(2, 3, 1, 0),
                )
        del magnitudes
        return istft(stems.transpose(-1, -2), audio.shape[-1], self.n_fft, self.n_hop)[
            ..., :nb_timesteps
        ]

    @torch.inference_mode()
    def iter_chunks(
        self, audio: Tensor, segment: float = SEGMENT, overlap: float = OVERLAP
    ) -> Iterator[Tensor]:
        """Separate a long mixture chunk by chunk, with linear cross-fades between chunks.

        Memory stays bounded by the segment length: the mixture may stay on the host while the
        models run on their device, and each finished piece is yielded as soon as it is final.

        Args:
            audio: mixture, `(nb_samples, nb_channels, nb_timesteps)`, checked by
                `check_input`.
            segment: longest chunk in seconds; chunk starts are aligned to the Wiener blocks
                (`wiener_win_len` frames), so chunks may be a little shorter.
            overlap: cross-fade length in seconds, at most half of `segment`.

        Raises:
            TypeError, UmxError: the mixture is refused (`check_input`), bad chunk options,
                chunks too short for the model (`check_segment`), or a piece with NaN or
                infinite samples (`check_finite`; whether all the stems are silent is the
                caller's to check, with `check_stems`, once they are all there).

        Yields:
            consecutive pieces of the stems, `(nb_samples, nb_targets, nb_channels, nb_piece)`,
            on the mixture's device; concatenated along time they cover the whole mixture.
        """
        audio = self.check_input(audio)
        for chunk in self.iter_unchecked(audio, segment, overlap):
            self.check_finite(peak(chunk), "audio")
            yield chunk

    @torch.inference_mode()
    def iter_unchecked(
        self, audio: Tensor, segment: float | None = SEGMENT, overlap: float = OVERLAP
    ) -> Iterator[Tensor]:
        """The pieces of `iter_chunks` (one piece, the whole track, with `segment=None`) without
        its checks of the mixture and the stems: for callers that have checked the mixture
        (`check_input`, or as `umx.api` does, then `check_ready`) and check the stems
        (`check_stems`), so that a long mixture is not checked twice. The chunk options are
        checked (`check_options`, `check_segment`).

        Args:
            audio: mixture, `(nb_samples, nb_channels, nb_timesteps)`, in the separator's
                `dtype`.
            segment, overlap: as `separate`.

        Yields:
            pieces of the stems, `(nb_samples, nb_targets, nb_channels, nb_piece)`, on the
            mixture's device.
        """
        yield from self.iter_blocks((audio,), segment, overlap)

    @torch.inference_mode()
    def iter_blocks(
        self, blocks: Iterable[Tensor], segment: float | None = SEGMENT, overlap: float = OVERLAP
    ) -> Iterator[Tensor]:
        """The pieces of `iter_unchecked` for a mixture given block by block (as a file is
        decoded), without its checks: the same pieces as for the blocks' concatenation, whatever
        their lengths. Chunked, only the frames of the chunk being separated are held (at most
        `segment` seconds and a block); with `segment=None` the blocks are joined first.

        Args:
            blocks: one block at least, the consecutive pieces of the mixture, each
                `(nb_samples, nb_channels, nb_block)` in the separator's `dtype`, on one device;
                a block may be empty. Blocks are asked for as the chunks need them, and a piece
                is yielded once the blocks up to a frame past its chunk were given: the last
                piece, once the iterable is exhausted, so that an error it raises at its end (a
                refusal of the input found while it is decoded) comes before the last piece.
            segment, overlap: as `separate`.

        Yields:
            pieces of the stems, `(nb_samples, nb_targets, nb_channels, nb_piece)`, on the
            blocks' device.
        """
        check_options(segment=segment, overlap=overlap)
        self.check_segment(segment)
        window = BlockWindow(blocks)
        if segment is None:
            window.fill(math.inf)
            audio = window.frames(0, window.end)
            yield self._whole(audio.to(self.device)).to(audio.device)
            return
        seg_len = round(segment * self.sample_rate)
        ovl_len = round(overlap * self.sample_rate)
        step = self._chunk_step(seg_len - ovl_len)
        start, carry, fade_in = 0, None, None
        while True:
            # up to one frame past the chunk, or to the end: whether it is the last chunk
            window.fill(start + step + ovl_len + 1)
            end = min(start + step + ovl_len, window.end)
            audio = window.frames(start, end)
            if fade_in is None:
                fade_in = (torch.arange(ovl_len, device=audio.device) + 0.5) / max(ovl_len, 1)
            chunk = self._whole(audio.to(self.device)).to(audio.device)
            if carry is not None:
                chunk[..., :ovl_len] = chunk[..., :ovl_len] * fade_in + carry
            if window.ended and end == window.end:
                yield chunk
                return
            carry = chunk[..., chunk.shape[-1] - ovl_len :] * (1.0 - fade_in)
            start += step
            window.drop(start)  # the frames before the next chunk
            yield chunk[..., : chunk.shape[-1] - ovl_len]

    def _chunk_step(self, step: int) -> int:
        """Chunk starts aligned to the whole track's STFT frames and, where the step spans one,
        to its Wiener blocks, so a chunk sees the frames and blocks of whole-track mode."""
        block = self.n_hop * (self.wiener_win_len or 1)
        unit = block if step >= block else self.n_hop if step >= self.n_hop else 1
        return step // unit * unit

    @torch.inference_mode()
    def separate(
        self, audio: Tensor, segment: float | None = SEGMENT, overlap: float = OVERLAP
    ) -> Tensor:
        """Separate a mixture, chunked (bounded memory) or, with `segment=None`, whole.

        Args:
            audio: mixture, `(nb_samples, nb_channels, nb_timesteps)`, on any device, checked
                by `check_input` (a numpy array is taken too).
            segment: chunk length in seconds; None processes the whole track at once.
            overlap: cross-fade length in seconds between chunks.

        Returns:
            stems, `(nb_samples, nb_targets, nb_channels, nb_timesteps)`, on the mixture's
            device (a numpy array's: the CPU), in the separator's `dtype`.

        Raises:
            TypeError, UmxError: the mixture is refused (`check_input`), bad chunk options, or
                stems that are not a result (`check_stems`).
        """
        audio = self.check_input(audio)
        stems = torch.cat(list(self.iter_unchecked(audio, segment, overlap)), dim=-1)
        self.check_stems(peak(audio), peak(stems), "audio")
        return stems

    def output_names(self, aggregate: Mapping[str, Sequence[str]] | None = None) -> list[str]:
        """The names of the stems `to_dict` gives, in its order: the groups of `aggregate`, or
        the targets without it."""
        return list(aggregate) if aggregate is not None else list(self.targets)

    def to_dict(
        self, stems: Tensor, aggregate: Mapping[str, Sequence[str]] | None = None
    ) -> dict[str, Tensor]:
        """Name the stems: `{target: (nb_samples, nb_channels, nb_timesteps)}`.

        Args:
            stems: output of `separate`, `(nb_samples, nb_targets, nb_channels, nb_timesteps)`.
            aggregate: optional groups, e.g. `{"vocals": ["vocals"], "accompaniment":
                ["drums", "bass", "other"]}`; each group is the sum of its targets and only
                the groups are returned.

        Raises:
            UmxError: stems of another shape, or a group naming an unknown target.
        """
        if stems.dim() != 4 or stems.shape[1] != len(self.targets):
            raise UmxError(
                f"stems must be (nb_samples, nb_targets={len(self.targets)}, nb_channels, "
                f"nb_timesteps) as separate gives them, got shape {tuple(stems.shape)}"
            )
        named = dict(zip(self.targets, stems.unbind(dim=1), strict=True))
        if aggregate is None:
            return named
        unknown = sorted({t for group in aggregate.values() for t in group} - set(named))
        if unknown:
            raise UmxError(
                f"cannot aggregate unknown targets {', '.join(unknown)}; "
                f"the targets are {', '.join(self.targets)}"
            )
        return {name: sum(named[t] for t in group) for name, group in aggregate.items()}


def waveform_model(model: OpenUnmix, n_fft: int = N_FFT, n_hop: int = N_HOP) -> nn.Sequential:
    """A target model that takes waveforms `(nb_samples, nb_channels, nb_timesteps)` and returns
    magnitudes `(nb_samples, nb_channels, nb_bins, nb_frames)`, computing the STFT on the fly."""
    return nn.Sequential(Spectrogram(n_fft, n_hop), model)


_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _trains(module: nn.Module) -> bool:
    """Whether `module` is a layer in training mode that separates otherwise than in evaluation
    mode: a BatchNorm or dropout layer, or a recurrent one with dropout between its layers."""
    dropout = isinstance(module, nn.RNNBase) and module.dropout > 0
    return module.training and (dropout or isinstance(module, _MODE_DEPENDENT))
