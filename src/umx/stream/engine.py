"""Block-by-block causal separation of a stream, with the state carried between blocks.

The stream is framed causally: a non-centred STFT (periodic Hann window) over the input preceded
by `n_fft - n_hop` zeros, so frame `k` ends with input sample `(k + 1) * n_hop - 1` and every
input sample is covered by all the frames that overlap it. Each target model is a unidirectional
`OpenUnmix` fed frame by frame with its LSTM state carried over (`OpenUnmix.stream`); the
filtering is `CausalWiener`, whose statistics use only past and present frames; the stems are
overlap-added with the squared-window normalisation (`istft_frames`).

A sample is final once the last frame that covers it has been computed, at most `n_fft - 1`
samples after it arrived. The stream returns the stems with a fixed latency of
`n_fft - gcd(block_multiple, n_hop)` samples: after `N` samples fed in all, exactly the stems
of the first `max(0, N - latency)` samples have been returned. With any block sizes that is
`n_fft - 1` samples (4095 samples, 92.9 ms for the default 4096/1024 STFT at 44.1 kHz); with
blocks that are multiples of the hop it is `n_fft - n_hop` (3072 samples, 69.7 ms).
`separate_causal` computes the same stems over a whole recording in one call.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from umx.audio.samples import check_samples, float_samples, peak
from umx.errors import UmxError, check_number
from umx.filtering import WIENER_MEMORY, CausalWiener
from umx.messages import plural
from umx.model import LSTMState
from umx.separator import Separator, decibels_above
from umx.transforms import istft_frames, magnitude, stft


class StreamingSeparator:
    """Separate a stream fed in blocks of any size, returning the stems with a fixed latency.

    Built on a loaded `Separator`: its target models (which must be unidirectional), STFT sizes,
    sample rate, channels, `niter`, `softmask` and residual (its `wiener_win_len`, the offline
    filter's blocks, gives way to `wiener_memory`). Between calls it keeps the input
    samples of the next frame, each model's LSTM state, the causal filter's statistics and the
    overlap-add tail, so no past frame is computed twice and memory does not grow with the
    stream. The models run on the separator's device.

    Args:
        separator: the separator whose models and settings to use.
        nb_channels: channels of the stream: the separator's by default; a one-channel
            separator also takes stereo (see `Separator.channels_for`).
        block_multiple: every block fed to `process` has a multiple of this many samples;
            the latency is `n_fft - gcd(block_multiple, n_hop)` samples.
        wiener_memory: time constant of the causal EM's statistics in frames (see
            `CausalWiener`); None for a cumulative average from the start of the stream.

    Attributes:
        latency: samples by which the returned stems lag the input (see the module's notes).

    Raises:
        UmxError: a target model is bidirectional, the options are out of range, or the
            separator is not ready (`Separator.check_ready`: in training mode, say).
    """

    def __init__(
        self,
        separator: Separator,
        *,
        nb_channels: int | None = None,
        block_multiple: int = 1,
        wiener_memory: float | None = WIENER_MEMORY,
    ) -> None:
        _refuse_some_bidirectional(separator)
        for name, model in separator.target_models.items():
            model.require_causal(f"the {name!r} model")
        nb_channels = separator.nb_channels if nb_channels is None else nb_channels
        check_number("nb_channels", nb_channels, integer=True)
        if nb_channels not in (1, 2) or separator.channels_for(nb_channels) != nb_channels:
            raise UmxError(
                f"the model separates {separator.nb_channels}-channel audio, not "
                f"{nb_channels!r}-channel audio"
            )
        check_number("the block multiple", block_multiple, above=0, integer=True)
        self.separator = separator
        self.nb_channels = int(nb_channels)
        self.block_multiple = block_multiple
        self.n_fft = separator.n_fft
        self.n_hop = separator.n_hop
        self.latency = self.n_fft - math.gcd(block_multiple, self.n_hop)
        self._filter = CausalWiener(
            niter=separator.niter,
            softmask=separator.softmask,
            residual=separator.residual is not None,
            memory=wiener_memory,
        )
        self._dtype = separator.check_ready()
        self.reset()

    @property
    def targets(self) -> list[str]:
        """Names of the separated sources, in output order (the residual last)."""
        return self.separator.targets

    @property
    def sample_rate(self) -> float:
        return self.separator.sample_rate

    def reset(self) -> None:
        """Forget the stream: the next block starts a new one."""
        device = self.separator.device
        # The input from the start of the next frame: at first, the zeros before the stream.
        self._input = torch.zeros(
            self.nb_channels, self.n_fft - self.n_hop, dtype=self._dtype, device=device
        )
        self._states: dict[str, LSTMState | None] = dict.fromkeys(self.separator.target_models)
        self._filter.reset()
        self._tail: Tensor | None = None
        self._skip = self.n_fft - self.n_hop  # finished samples that belong to the zeros
        self._ready = torch.zeros(
            len(self.targets), self.nb_channels, 0, dtype=self._dtype, device=device
        )
        self._nb_fed = 0
        self._input_peak = 0.0  # of the stream so far: the stems' scale
        self._nb_returned = 0

    @torch.inference_mode()
    def process(self, block: Tensor) -> Tensor:
        """Feed the next block of the stream and get the stems that became due.

        Args:
            block: the next samples, `(nb_channels, nb_block)`, at the separator's rate, with
                `nb_block` a multiple of `block_multiple` (any length for `flush`): a tensor or
                numpy array of real floating-point samples, as `umx.separate` takes.

        Returns:
            the next samples of the stems, `(nb_targets, nb_channels, nb_out)`, on the block's
            device (a numpy array's: the CPU): after `N` samples fed in all, the stems of the
            first `max(0, N - latency)` samples have been returned.

        Raises:
            TypeError: the block holds no real floating-point samples (integer PCM, say).
            UmxError: the block's shape, length or values cannot be separated, or the separator
                is not ready (`Separator.check_ready`).
        """
        block = float_samples(block, "a block")
        samples = self._check(block)
        if samples.shape[-1] % self.block_multiple:
            raise UmxError(
                f"a block of {samples.shape[-1]} samples is not a multiple of the block "
                f"multiple {self.block_multiple}; give the last, partial block to flush()"
            )
        self._feed(samples)
        self._nb_fed += samples.shape[-1]
        return self._take(max(0, self._nb_fed - self.latency) - self._nb_returned, block)

    @torch.inference_mode()
    def flush(self, block: Tensor | None = None) -> Tensor:
        """End the stream: the stems of everything fed and not yet returned.

        The frames past the end of the stream are computed on zeros, as `separate_causal`
        does, so that all the returned stems together have exactly the stream's length. The
        separator is then reset for a new stream.

        Args:
            block: the last samples, `(nb_channels, nb_block)`, of any length; none if None.

        Returns:
            the rest of the stems, `(nb_targets, nb_channels, nb_out)`, on the block's device
            (the separator's if no block is given).
        """
        if block is not None:
            block = float_samples(block, "a block")
        like = self._input if block is None else block
        if block is not None:
            samples = self._check(block)
            self._feed(samples)
            self._nb_fed += samples.shape[-1]
        if self._nb_fed:
            # Zeros up to the end of the last frame that covers the stream's last sample.
            nb_frames = _nb_frames(self._nb_fed, self.n_fft, self.n_hop)
            end = (nb_frames - 1) * self.n_hop + self.n_fft
            padded = self.n_fft - self.n_hop + self._nb_fed  # the zeros before the stream too
            self._feed(self._input.new_zeros(self.nb_channels, end - padded))
        rest = self._take(self._nb_fed - self._nb_returned, like)
        self.reset()
        return rest

    def _feed(self, block: Tensor) -> None:
        """Append `block` (checked) to the input, separate the frames it completes and add their
        finished samples to those ready to be returned."""
        self._input_peak = max(self._input_peak, peak(block))
        buffer = torch.cat([self._input, block], dim=-1)
        if buffer.shape[-1] < self.n_fft:
            self._input = buffer
            return
        spec = stft(buffer, self.n_fft, self.n_hop, center=False)
        # Copies, so that what is kept between calls holds no large block's memory.
        self._input = buffer[:, spec.shape[-1] * self.n_hop :].clone()
        finished, tail = istft_frames(self._separate(spec), self.n_fft, self.n_hop, self._tail)
        bad = ~torch.isfinite(finished).flatten(0, -2).all(dim=0)
        if bool(bad.any()):
            # Never returned as stems: the filter's statistics would not recover from it either.
            start = self._nb_returned + self._ready.shape[-1] - self._skip
            at = max(0, start + int(bad.nonzero()[0])) / self.sample_rate
            raise UmxError(
                f"the separation gave NaN or infinite samples at {at:.3f} s of the stream; "
                "none were returned (with --niter above 2, try a smaller one; else please report "
                "this with the input)"
            )
        above = decibels_above(peak(finished), self._input_peak)
        if above is not None:
            at = max(0, self._nb_returned + self._ready.shape[-1] - self._skip) / self.sample_rate
            raise UmxError(
                f"the separation gave stems {above:.0f} dB above the input after {at:.3f} s of "
                "the stream; none of them were returned (with --niter above 2, try a smaller one)"
            )
        self._tail = tail.clone()
        skip = min(self._skip, finished.shape[-1])
        self._skip -= skip
        self._ready = torch.cat([self._ready, finished[..., skip:]], dim=-1)

    def _take(self, count: int, like: Tensor) -> Tensor:
        """The next `count` ready samples, on `like`'s device."""
        out, self._ready = self._ready[..., :count], self._ready[..., count:].clone()
        self._nb_returned += count
        return out.to(like.device)

    def _check(self, block: Tensor) -> Tensor:
        """`block` (from `float_samples`) checked, with the separator (`check_ready`), and moved
        to the separator's device and dtype."""
        if block.dim() != 2 or block.shape[0] != self.nb_channels:
            raise UmxError(
                "a block must be a tensor (nb_channels, nb_block) with "
                f"{plural(self.nb_channels, 'channel')}, got {tuple(block.shape)}"
            )
        self.separator.check_ready()
        check_samples(block, self._nb_fed / self.sample_rate, self.sample_rate, "the stream")
        return block.to(self.separator.device, self._dtype)

    def _separate(self, spec: Tensor) -> Tensor:
        """Complex stems of the next frames from the mixture's, `(nb_channels, nb_bins,
        nb_frames)` → `(nb_targets, nb_channels, nb_bins, nb_frames)`."""
        mix_mag = magnitude(spec[None], mono=self.separator.nb_channels == 1)
        magnitudes = []
        for name, model in self.separator.target_models.items():
            estimate, self._states[name] = model.stream(mix_mag, self._states[name])
            magnitudes.append(estimate[0])
        # (nb_frames, nb_bins, nb_channels, nb_targets) and (nb_frames, nb_bins, nb_channels)
        magnitudes = torch.stack(magnitudes, dim=-1).permute(2, 1, 0, 3)
        stems = self._filter(magnitudes, spec.permute(2, 1, 0))
        return stems.permute(3, 2, 1, 0)


def _nb_frames(nb_timesteps: int, n_fft: int, n_hop: int) -> int:
    """Frames of the causal framing that cover a stream of `nb_timesteps` samples (at least 1)."""
    return (n_fft - n_hop + nb_timesteps - 1) // n_hop + 1


@torch.inference_mode()
def separate_causal(
    separator: Separator, audio: Tensor, *, wiener_memory: float | None = WIENER_MEMORY
) -> Tensor:
    """Separate a whole recording with the causal framing, models and filter of a stream.

    The result is that of `StreamingSeparator` fed the recording in blocks of any sizes and
    flushed (to rounding), without the latency: all frames are computed at once, as an offline
    separation with a causal model.

    Args:
        separator: the separator whose models (unidirectional) and settings to use.
        audio: the mixture, `(nb_channels, nb_timesteps)`, at the separator's rate: a tensor or
            numpy array of real floating-point samples, as `umx.separate` takes.
        wiener_memory: time constant of the causal EM's statistics in frames; None for a
            cumulative average.

    Returns:
        the stems, `(nb_targets, nb_channels, nb_timesteps)`, on the audio's device (a numpy
        array's: the CPU).

    Raises:
        TypeError: the audio holds no real floating-point samples (integer PCM, say).
        UmxError: a target model is bidirectional, the audio cannot be separated, or the stems
            are not a result (`Separator.check_stems`).
    """
    audio = float_samples(audio, "audio")
    nb_channels = audio.shape[0] if audio.dim() == 2 else None
    stream = StreamingSeparator(separator, nb_channels=nb_channels, wiener_memory=wiener_memory)
    mix = stream._check(audio)
    nb_timesteps = mix.shape[-1]
    n_fft, n_hop = separator.n_fft, separator.n_hop
    if nb_timesteps == 0:
        return audio.new_zeros(len(separator.targets), *audio.shape)
    pre = n_fft - n_hop
    end = (_nb_frames(nb_timesteps, n_fft, n_hop) - 1) * n_hop + n_fft
    spec = stft(F.pad(mix, (pre, end - pre - nb_timesteps)), n_fft, n_hop, center=False)
    stems, _ = istft_frames(stream._separate(spec), n_fft, n_hop)
    stems = stems[..., pre : pre + nb_timesteps]
    separator.check_stems(peak(mix), peak(stems), "audio")
    return stems.to(audio.device)


def _refuse_some_bidirectional(separator: Separator) -> None:
    """Refuse a model folder some of whose targets are bidirectional, naming them and the
    causal ones, which `--targets` streams alone (a folder of bidirectional targets only is
    refused by the stream, with the advice to use a causal model).

    Raises:
        UmxError: naming the targets of each kind and what to type.
    """
    models = separator.target_models.items()
    causal = [name for name, model in models if model.unidirectional]
    bidirectional = [name for name, model in models if not model.unidirectional]
    if not causal or not bidirectional:
        return
    many = len(bidirectional) > 1
    owner = separator.model_name or "the separator"
    raise UmxError(
        f"the {', '.join(bidirectional)} model{'s' * many} of {owner} "
        f"{'are' if many else 'is'} bidirectional and cannot stream; its causal "
        f"{', '.join(causal)} can: give --targets {' '.join(causal)}, or train "
        f"{' and '.join(bidirectional)} with --unidirectional"
    )
