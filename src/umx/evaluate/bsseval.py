"""BSSEval v4 computed as museval 0.4.1 computes it for MUSDB18, batched over windows and sources.

What museval's `evaluate` (`bss_eval_images`, v4 mode, no permutation search) computes, which this
module reproduces step for step:

1. Distortion filters are fitted **once on the whole track**: the least-squares projection of each
   estimate channel on the references delayed by 0 to `filter_len - 1` samples (512 taps), all
   references at once (the filters `C`) and its own reference alone (the filters `C_j`). The
   normal equations are `(G + eps·I) C = D`, where `G` is the Gram matrix of the delayed
   reference channels, `D` their inner products with the estimate and `eps` float64's machine
   epsilon, added as is (not scaled).
2. Each window (of `window` samples, one every `hop`; the last partial window is dropped, and a
   track shorter than a window is one window) filters the window's references alone, zero-padded
   (no samples from outside the window), giving `P_j` (own reference) and `P` (all references),
   each `filter_len - 1` samples longer than the window, and scores

   ```
   SDR = 10 log10(‖s‖² / ‖ŝ - s‖²)       ISR = 10 log10(‖s‖² / ‖P_j - s‖²)
   SIR = 10 log10(‖P_j‖² / ‖P - P_j‖²)   SAR = 10 log10(‖P‖² / ‖ŝ - P‖²)
   ```

   with `s` the window's reference and `ŝ` its estimate; a zero denominator gives +inf.
3. A window in which any reference or any estimate is silent scores NaN for every source, where
   silent means that the sum of its channels is zero at every sample (museval's test, so a stereo
   source with one channel the negative of the other counts as silent); a source silent over the
   whole track is refused.

How it is computed here (all in float64, with torch and numpy): the Gram matrix and the inner
products come from cross-correlations accumulated over blocks of the track (short FFTs, one
matrix product per frequency for all channel pairs) instead of one track-long FFT per pair; one
LU factorisation of `G + eps·I` serves every estimate (museval factorises it once per estimate);
a reference channel that copies another is left out of the systems, which changes no projection;
windows are filtered in the frequency domain, a few at a time, and the energies are summed there
(Parseval), without going back to the time domain.

The scores match museval's within 1e-3 dB (about 1e-9 dB on noise-like signals; see
docs/evaluation.md for the cases where museval's own numbers are rounding noise).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

FILTER_LEN = 512
"""Distortion filter length in samples (museval's)."""
MAX_SOURCES = 100
"""museval's limit on the number of sources, which also catches a track passed as sources."""
EPS = float(np.finfo(np.float64).eps)
"""Added to the diagonal of the Gram matrices before solving, as museval does."""
BLOCK_FFT = 16384
"""FFT length of the blocks over which the track's correlations are accumulated."""
MEMORY = 256 * 2**20
"""Bytes of spectra held at once, which sets how many blocks or windows are processed together."""


class Scores(NamedTuple):
    """BSSEval v4 scores in dB, each `(nb_sources, nb_windows)`; NaN in unscored windows."""

    sdr: np.ndarray
    isr: np.ndarray
    sir: np.ndarray
    sar: np.ndarray


def nb_windows(nb_timesteps: int, window: int, hop: int) -> int:
    """The number of windows museval scores: whole windows only, or one for a short track."""
    if window < nb_timesteps:
        return (nb_timesteps - window + hop) // hop
    return 1


def bss_eval(
    references: np.ndarray,
    estimates: np.ndarray,
    *,
    window: int,
    hop: int,
    filter_len: int = FILTER_LEN,
) -> Scores:
    """BSSEval v4 images metrics per window, as `museval.evaluate(..., mode="v4")` gives them.

    Args:
        references: `(nb_sources, nb_timesteps, nb_channels)`, the true sources; as in museval,
            `(nb_sources, nb_timesteps)` is mono and `(nb_timesteps,)` one mono source.
        estimates: their estimates, in the same order and shape.
        window, hop: in samples.
        filter_len: taps of the distortion filters.

    Returns:
        SDR, ISR, SIR and SAR, each `(nb_sources, nb_windows)`.

    Raises:
        ValueError: shapes that differ or have more than 3 axes, no samples, over 100 sources, a
            window, hop or filter shorter than one sample, NaN or infinite samples, or a source
            whose channels sum to zero over the whole track.
    """
    references = np.atleast_3d(references)
    estimates = np.atleast_3d(estimates)
    if references.ndim != 3 or references.shape != estimates.shape:
        raise ValueError(
            f"references {references.shape} and estimates {estimates.shape} must have one shape "
            "(nb_sources, nb_timesteps, nb_channels)"
        )
    nb_sources, _, nb_channels = references.shape
    if min(references.shape) == 0:
        raise ValueError(f"no sources, samples or channels to score: shape {references.shape}")
    if nb_sources > MAX_SOURCES:
        raise ValueError(
            f"{nb_sources} sources, more than {MAX_SOURCES}: is the shape (nb_sources, "
            f"nb_timesteps, nb_channels)? {references.shape}"
        )
    for name, value in (("window", window), ("hop", hop), ("filter_len", filter_len)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a whole number of samples, at least 1, got {value}")
    for name, sources in (("reference", references), ("estimate", estimates)):
        with np.errstate(invalid="ignore", over="ignore"):
            finite = np.isfinite(sources.sum())  # an overflowing sum is refused too
        if not finite:
            raise ValueError(
                f"the {name}s hold NaN or infinite samples, which BSSEval cannot score"
            )
        channel_sum = sources[..., 0].copy()
        for channel in range(1, nb_channels):
            channel_sum += sources[..., channel]
        silent = ~channel_sum.any(axis=1)
        if silent.any():
            raise ValueError(
                f"the {name} of source {int(np.argmax(silent))} is silent (its channels sum to "
                "zero everywhere), which BSSEval cannot score"
            )
    window, hop, filter_len = int(window), int(hop), int(filter_len)
    correlations = _correlations(references, estimates, filter_len)
    copies = _copied_channels(references)
    filters, own_filters = _filters(correlations, nb_sources, nb_channels, copies)
    del correlations
    return _window_scores(references, estimates, filters, own_filters, window, hop)


def _fft_length(length: int) -> int:
    """The smallest FFT length of at least `length` samples with no prime factor above 5."""
    best = 1 << (length - 1).bit_length()
    fives = 1
    while fives < best:
        odd = fives
        while odd < best:
            candidate = odd
            while candidate < length:
                candidate *= 2
            best = min(best, candidate)
            odd *= 3
        fives *= 5
    return best


def _segment(signals: tuple[np.ndarray, ...], start: int, stop: int) -> torch.Tensor:
    """Samples `start` to `stop` of every channel of every signal, zero outside the track.

    Args:
        signals: each `(nb_sources, nb_timesteps, nb_channels)`.

    Returns:
        `(len(signals) * nb_sources * nb_channels, stop - start)` float64, the channels of a
        source together, the sources of a signal together.
    """
    nb_sources, nb_timesteps, nb_channels = signals[0].shape
    out = torch.empty(len(signals), nb_sources, nb_channels, stop - start, dtype=torch.float64)
    first, last = max(start, 0), min(stop, nb_timesteps)
    out[..., : max(first - start, 0)] = 0
    out[..., max(last - start, 0) :] = 0
    for index, sources in enumerate(signals):
        if first < last:
            piece = torch.from_numpy(sources[:, first:last]).transpose(1, 2)
            out[index, :, :, first - start : last - start] = piece
    return out.view(-1, stop - start)


def _correlations(references: np.ndarray, estimates: np.ndarray, filter_len: int) -> torch.Tensor:
    """Cross-correlations over the whole track of each reference channel with every reference and
    estimate channel, at lags `-(filter_len - 1)` to `filter_len - 1`.

    `out[k + filter_len - 1, p, q] = Σ_t x_p(t) y_q(t + k)`, with `x` the reference channels and
    `y` the reference channels followed by the estimate channels, zero outside the track. The
    track is cut into blocks of `block` samples; each block of `x` (zero-padded) is correlated
    with the block of `y` widened by `filter_len - 1` samples on both sides, which the FFT length
    holds without wrapping, and the block spectra are summed before one inverse FFT.

    Returns:
        `(2 * filter_len - 1, nb_sources * nb_channels, 2 * nb_sources * nb_channels)` float64.
    """
    nb_sources, nb_timesteps, nb_channels = references.shape
    margin = filter_len - 1
    n_fft = BLOCK_FFT
    if nb_timesteps + 2 * margin < n_fft or 2 * margin >= n_fft // 2:  # one block, or long filters
        n_fft = _fft_length(min(nb_timesteps, n_fft) + 2 * margin)
    block = n_fft - 2 * margin
    nb_refs = nb_sources * nb_channels
    nb_bins = n_fft // 2 + 1
    blocks_per_chunk = max(1, MEMORY // (3 * nb_refs * nb_bins * 16))
    spectra = np.zeros((nb_bins, nb_refs, 2 * nb_refs), dtype=np.complex128)
    nb_blocks = -(-nb_timesteps // block)
    for first in range(0, nb_blocks, blocks_per_chunk):
        count = min(blocks_per_chunk, nb_blocks - first)
        start, stop = first * block, (first + count) * block
        x = _segment((references,), start, stop).view(nb_refs, count, block)
        y = _segment((references, estimates), start - margin, stop + margin)
        y = y.unfold(1, block + 2 * margin, block)
        x_spec = torch.fft.rfft(x, n=n_fft).permute(2, 0, 1).conj()  # (nb_bins, refs, blocks)
        y_spec = torch.fft.rfft(y, n=n_fft).permute(2, 1, 0)  # (nb_bins, blocks, refs + ests)
        # One small product per frequency: numpy's loop of single-threaded BLAS calls, where
        # torch's threaded batched product waits on its threads thousands of times, which costs
        # seconds on a loaded machine.
        spectra += np.matmul(x_spec.resolve_conj().numpy(), y_spec.numpy())
    return torch.fft.irfft(torch.from_numpy(spectra), n=n_fft, dim=0)[: 2 * margin + 1]


def _copied_channels(references: np.ndarray) -> list[int]:
    """Reference channels equal, sample for sample, to an earlier channel of the same source (a
    mono source stored in stereo), as indices `source * nb_channels + channel`."""
    nb_sources, _, nb_channels = references.shape
    return [
        source * nb_channels + channel
        for source in range(nb_sources)
        for channel in range(1, nb_channels)
        if any(
            np.array_equal(references[source, :, channel], references[source, :, earlier])
            for earlier in range(channel)
        )
    ]


def _filters(
    correlations: torch.Tensor, nb_sources: int, nb_channels: int, copies: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distortion filters of every estimate: on all references, and on its own reference.

    A reference channel that copies another adds nothing to the span of the delayed references
    but makes the Gram matrix singular, so its filters are left at zero and the systems are
    solved without it: the projections are those of museval, whose solution splits the filters
    between the equal channels in some arbitrary way that does not change them.

    Args:
        correlations: from `_correlations`.
        copies: from `_copied_channels`.

    Returns:
        `filters` `(nb_sources * nb_channels, filter_len, nb_sources * nb_channels)`: tap `a`
        from reference channel `p` to estimate channel `q`; `own_filters`
        `(nb_sources, nb_channels, filter_len, nb_channels)`: tap `a` from channel `c'` of
        source `j`'s reference to channel `c` of its estimate.
    """
    nb_refs = nb_sources * nb_channels
    filter_len = (correlations.shape[0] + 1) // 2
    kept = torch.tensor([p for p in range(nb_refs) if p not in copies])
    taps = torch.arange(filter_len)
    # Gram matrix of the delayed reference channels, rows and columns ordered (source, channel,
    # delay): <x_p(. - a), x_q(. - b)> is the correlation of x_p and x_q at lag a - b.
    lags = taps[:, None] - taps[None, :] + filter_len - 1
    gram = correlations[:, kept][:, :, kept][lags].permute(2, 0, 3, 1)
    gram = gram.reshape(len(kept) * filter_len, -1)
    # <x_p(. - a), estimate channel q> is their correlation at lag a.
    inner = correlations[filter_len - 1 :, kept, nb_refs:].transpose(0, 1)
    inner = inner.reshape(len(kept) * filter_len, nb_refs)
    filters = torch.zeros(nb_refs, filter_len, nb_refs, dtype=torch.float64)
    own_filters = torch.zeros(nb_sources, nb_channels, filter_len, nb_channels, dtype=torch.float64)
    for source in range(nb_sources):
        own = torch.nonzero(kept // nb_channels == source).flatten()
        rows = (own[:, None] * filter_len + taps).flatten()
        columns = slice(source * nb_channels, (source + 1) * nb_channels)
        solution = _solve(gram[rows][:, rows], inner[rows, columns])  # copies of gram's blocks
        own_filters[source, kept[own] % nb_channels] = solution.view(len(own), filter_len, -1)
    filters[kept] = _solve(gram, inner).view(len(kept), filter_len, nb_refs)
    return filters, own_filters


def _solve(gram: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Solve `(gram + eps·I) x = inner` by LU, as museval does.

    Where LU still meets an exactly zero pivot (an exact degeneracy other than a copied channel),
    museval takes the least-squares solution of `gram x = inner` instead, cutting the singular
    values below `n·eps` times the largest. Here the ridge is raised to that cut-off instead:
    one more LU rather than an SVD, many times slower.

    Args:
        gram: `(n, n)`, overwritten.
        inner: `(n, nb_rhs)`.

    Returns:
        `(n, nb_rhs)`.

    Raises:
        ValueError: the system is singular even with the larger ridge.
    """
    size = gram.shape[-1]
    cutoff = EPS * size * float(gram.diagonal().max())
    gram.diagonal().add_(EPS)
    factors, pivots, info = torch.linalg.lu_factor_ex(gram)
    if info != 0:
        gram.diagonal().add_(cutoff - EPS)
        factors, pivots, info = torch.linalg.lu_factor_ex(gram)
    if info == 0:
        return torch.linalg.lu_solve(factors, pivots, inner)
    raise ValueError("the references' correlation matrix is singular even with a ridge")


def _window_scores(
    references: np.ndarray,
    estimates: np.ndarray,
    filters: torch.Tensor,
    own_filters: torch.Tensor,
    window: int,
    hop: int,
) -> Scores:
    """Score every window with the track's filters (see `bss_eval`)."""
    nb_sources, nb_timesteps, nb_channels = references.shape
    filter_len = filters.shape[1]
    length = min(window, nb_timesteps)
    total = nb_windows(nb_timesteps, window, hop)
    n_fft = _fft_length(length + filter_len - 1)
    nb_bins = n_fft // 2 + 1
    # Parseval for a real signal from its half spectrum: the bins between 0 and Nyquist count
    # twice; each weight is repeated for the real and imaginary parts.
    weights = torch.full((nb_bins, 2), 2.0 / n_fft, dtype=torch.float64)
    weights[0] = 1.0 / n_fft
    if n_fft % 2 == 0:
        weights[-1] = 1.0 / n_fft
    weights = weights.flatten()
    # Spectra keep the frequency last, so that every product below runs along contiguous memory.
    filters_spec = torch.fft.rfft(filters.permute(0, 2, 1), n=n_fft)  # (refs, ests, bins)
    own_spec = torch.fft.rfft(own_filters.permute(0, 1, 3, 2), n=n_fft)  # (j, c', c, bins)

    def energy(spectrum: torch.Tensor) -> torch.Tensor:
        """`(nb_win, nb_sources, nb_channels, nb_bins)` → `(nb_win, nb_sources)`."""
        return (torch.view_as_real(spectrum).flatten(-2).square() @ weights).sum(dim=-1)

    energies = torch.empty(7, total, nb_sources, dtype=torch.float64)
    silent = torch.empty(total, dtype=torch.bool)
    per_chunk = max(1, MEMORY // (8 * nb_sources * nb_channels * nb_bins * 16))
    for first in range(0, total, per_chunk):
        count = min(per_chunk, total - first)
        start = first * hop
        stop = start + (count - 1) * hop + length
        frames = [
            _segment((sources,), start, stop)
            .unfold(1, length, hop)
            .view(nb_sources, nb_channels, count, length)
            .permute(2, 0, 1, 3)
            for sources in (references, estimates)
        ]  # each (count, nb_sources, nb_channels, length)
        reference, estimate = frames
        silent[first : first + count] = torch.stack(
            [(frame.sum(dim=2) == 0).all(dim=-1).any(dim=-1) for frame in frames]
        ).any(dim=0)
        ref_spec = torch.fft.rfft(reference, n=n_fft)  # (count, j, c, bins)
        est_spec = torch.fft.rfft(estimate, n=n_fft)
        flat = ref_spec.flatten(1, 2)  # (count, refs, bins)
        projection = torch.zeros_like(flat)
        for channel in range(flat.shape[1]):
            projection += flat[:, channel, None] * filters_spec[channel]
        projection = projection.view_as(ref_spec)
        own = torch.zeros_like(ref_spec)
        for channel in range(nb_channels):
            own += ref_spec[:, :, channel, None] * own_spec[:, channel]
        chunk = energies[:, first : first + count]
        chunk[0] = reference.square().sum(dim=(2, 3))
        chunk[1] = (estimate - reference).square().sum(dim=(2, 3))
        chunk[2] = energy(own - ref_spec)
        chunk[3] = energy(own)
        chunk[4] = energy(projection - own)
        chunk[5] = energy(projection)
        chunk[6] = energy(est_spec - projection)
    return _ratios(energies.numpy(), silent.numpy())


def _ratios(energies: np.ndarray, silent: np.ndarray) -> Scores:
    """The scores of `_window_scores`'s energies `(7, nb_win, nb_sources)`, in dB (infinite
    where the error's energy is zero), NaN in the windows that are `silent` `(nb_win,)`."""
    with np.errstate(divide="ignore"):
        ratios = [
            np.where(den == 0, np.inf, 10 * np.log10(num / np.where(den == 0, 1.0, den)))
            for num, den in (
                (energies[0], energies[1]),  # SDR
                (energies[0], energies[2]),  # ISR
                (energies[3], energies[4]),  # SIR
                (energies[5], energies[6]),  # SAR
            )
        ]
    for ratio in ratios:
        ratio[silent] = np.nan
    return Scores(*(ratio.T.copy() for ratio in ratios))
