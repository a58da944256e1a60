"""The Open-Unmix network: magnitude spectrogram in, magnitude spectrogram of one target out.

The parameter names and shapes are those of the published Open-Unmix checkpoints, so their state
dicts load unchanged. The model knows nothing of waveforms: see `umx.transforms.Spectrogram`.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from umx.errors import UmxError

LSTM_DROPOUT = 0.4

LSTMState = tuple[Tensor, Tensor]
"""An LSTM's `(h, c)`, each `(nb_layers, nb_samples, hidden_size)`."""

_Model = TypeVar("_Model", bound="_Freezable")


class _Freezable(nn.Module):
    """The one `freeze` of the models here (`OpenUnmix`, `CrossUnmix` and its target views)."""

    def freeze(self: _Model) -> _Model:
        """Switch to inference: evaluation mode and no gradients. Returns the model."""
        for parameter in self.parameters():
            parameter.requires_grad = False
        return self.eval()


class OpenUnmix(_Freezable):
    """Open-Unmix: a (bi)LSTM that predicts a mask and applies it to the input magnitude.

    Args:
        nb_bins: number of frequency bins of the input and output, `n_fft // 2 + 1`.
        nb_channels: number of audio channels (1 or 2).
        hidden_size: width of the fully connected layers and of the LSTM output.
        nb_layers: number of LSTM layers.
        unidirectional: use a causal, forward-only LSTM.
        input_mean: per-bin mean of the training magnitudes, `(>= max_bin,)`; zeros if None.
        input_scale: per-bin standard deviation of the training magnitudes; ones if None.
        max_bin: number of low bins the network sees (the bandwidth); all bins if None.
    """

    def __init__(
        self,
        nb_bins: int = 2049,
        nb_channels: int = 2,
        hidden_size: int = 512,
        nb_layers: int = 3,
        unidirectional: bool = False,
        input_mean: Tensor | None = None,
        input_scale: Tensor | None = None,
        max_bin: int | None = None,
    ) -> None:
        super().__init__()
        self.nb_output_bins = nb_bins
        self.nb_bins = max_bin or nb_bins
        self.nb_channels = nb_channels
        self.hidden_size = hidden_size

        self.fc1 = nn.Linear(self.nb_bins * nb_channels, hidden_size, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden_size)
        self.lstm = nn.LSTM(
            input_size=hidden_size,
            hidden_size=hidden_size if unidirectional else hidden_size // 2,
            num_layers=nb_layers,
            bidirectional=not unidirectional,
            dropout=LSTM_DROPOUT if nb_layers > 1 else 0.0,
        )
        self.fc2 = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.bn2 = nn.BatchNorm1d(hidden_size)
        self.fc3 = nn.Linear(hidden_size, self.nb_output_bins * nb_channels, bias=False)
        self.bn3 = nn.BatchNorm1d(self.nb_output_bins * nb_channels)

        # Stored as the checkpoints store them: the negated mean and the inverse scale.
        mean = torch.zeros(self.nb_bins) if input_mean is None else -input_mean[: self.nb_bins]
        scale = (
            torch.ones(self.nb_bins) if input_scale is None else 1.0 / input_scale[: self.nb_bins]
        )
        self.input_mean = nn.Parameter(mean.float().clone())
        self.input_scale = nn.Parameter(scale.float().clone())
        self.output_scale = nn.Parameter(torch.ones(self.nb_output_bins))
        self.output_mean = nn.Parameter(torch.ones(self.nb_output_bins))

    @property
    def unidirectional(self) -> bool:
        return not self.lstm.bidirectional

    @property
    def nb_layers(self) -> int:
        return self.lstm.num_layers

    def forward(self, x: Tensor) -> Tensor:
        """Estimate the target's magnitude spectrogram.

        Args:
            x: mixture magnitudes, `(nb_samples, nb_channels, nb_bins, nb_frames)`.

        Returns:
            target magnitudes, `(nb_samples, nb_channels, nb_bins, nb_frames)`.

        In evaluation mode without gradients the same function is computed with fewer passes
        over memory (bn3 folded into fc3, masking in place); results agree to rounding.
        """
        return self._run(x, None)[0]

    def stream(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """Estimate the target's magnitudes for the next frames of a stream (causal models).

        Every layer but the LSTM works frame by frame, so carrying the LSTM's state from one
        call to the next gives, for frames split into consecutive pieces in any way, the output
        of one `forward` over all of them (to rounding). Use evaluation mode, as for separation.

        Args:
            x: the next frames' mixture magnitudes, `(nb_samples, nb_channels, nb_bins,
                nb_frames)`; `nb_frames` may be 0.
            state: the state returned by the call on the previous frames; None at the start.

        Returns:
            the target magnitudes, `(nb_samples, nb_channels, nb_bins, nb_frames)`, and the
            state after the last frame: the LSTM's `(h, c)`, each `(nb_layers, nb_samples,
            hidden_size)`.

        Raises:
            UmxError: the model is bidirectional.
        """
        self.require_causal()
        if x.shape[-1] == 0:
            if state is None:
                zeros = x.new_zeros(self.nb_layers, x.shape[0], self.hidden_size)
                state = (zeros, zeros.clone())
            return x.clone(), state
        return self._run(x, state)

    def require_causal(self, name: str = "the model") -> None:
        """Refuse a bidirectional model where only past frames may be used.

        Args:
            name: how the message names the model, e.g. `the 'vocals' model`.

        Raises:
            UmxError: the model's LSTM is bidirectional.
        """
        if not self.unidirectional:
            raise UmxError(
                f"{name} has a bidirectional LSTM, which needs the whole future of the signal "
                "and cannot separate a stream: use a causal model (such as umxsynth-rt) or "
                "train one with `umx train --unidirectional`"
            )

    def _run(self, x: Tensor, state: LSTMState | None) -> tuple[Tensor, LSTMState]:
        """`forward` from the LSTM state `state`; returns the output and the final state."""
        mix = x.permute(3, 0, 1, 2)  # (nb_frames, nb_samples, nb_channels, nb_bins)
        nb_frames, nb_samples, nb_channels, _ = mix.shape

        h = (mix[..., : self.nb_bins] + self.input_mean) * self.input_scale
        h = self.bn1(self.fc1(h.reshape(-1, nb_channels * self.nb_bins)))
        h = torch.tanh(h.reshape(nb_frames, nb_samples, self.hidden_size))
        lstm_out, state = self.lstm(h, state)
        h = torch.cat([h, lstm_out], dim=-1)
        h = F.relu(self.bn2(self.fc2(h.reshape(-1, 2 * self.hidden_size))))
        shape = (nb_frames, nb_samples, nb_channels, self.nb_output_bins)
        if self.training or torch.is_grad_enabled():
            h = self.bn3(self.fc3(h)).reshape(shape)
            y = F.relu(h * self.output_scale + self.output_mean) * mix
            return y.permute(1, 2, 3, 0), state
        # Inference: bn3 (running statistics) and the output scaling fold into one affine map
        # after fc3's matrix product, and the ReLU and the masking work in place.
        output_scale = self.output_scale.repeat(nb_channels)
        gain, shift = _batch_norm_affine(self.bn3)
        bias = shift * output_scale + self.output_mean.repeat(nb_channels)
        h = torch.addmm(bias, h, self.fc3.weight.t() * (gain * output_scale)).reshape(shape)
        return h.relu_().mul_(mix).permute(1, 2, 3, 0), state


def _batch_norm_affine(bn: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """`(gain, shift)` with `bn(z) = z * gain + shift` in evaluation mode."""
    gain = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return gain, bn.bias - bn.running_mean * gain


class CrossUnmix(_Freezable):
    """CrossNet-Open-Unmix (X-UMX): one Open-Unmix branch per target, joined by averaging.

    Each target keeps Open-Unmix's layers (input scaling, fc1 + bn1, LSTM, fc2 + bn2, fc3 + bn3,
    output scaling), but the branches exchange information through two "bridging paths"
    (Sawata et al., ICASSP 2021): every LSTM reads the mean over targets of the encoded inputs
    (after fc1, bn1 and tanh), and every decoder (fc2 onwards) reads the mean over targets of
    the encoded input joined with the LSTM output. It has the parameters of the separate
    Open-Unmix models it replaces, and estimates all targets in one pass.

    The parameter names and shapes are those of asteroid's `XUMX`, so its checkpoints' state
    dicts load unchanged (less its STFT window): `layer_enc.<target>.enc.{0,1}` (fc1, bn1),
    `layer_lstm.<target>`, `layer_dec.<target>.dec.{0,1,3,4}` (fc2, bn2, fc3, bn3) and
    `mean_scale.{input,output}_{mean,scale}_<target>`.

    Args:
        targets: the target names, in output order.
        nb_bins: number of frequency bins of the input and output, `n_fft // 2 + 1`.
        nb_channels: number of audio channels (1 or 2).
        hidden_size: width of the fully connected layers and of the LSTM output.
        nb_layers: number of LSTM layers.
        unidirectional: use causal, forward-only LSTMs.
        input_mean: per-bin mean of the training magnitudes, `(>= max_bin,)`; zeros if None.
        input_scale: per-bin standard deviation of the training magnitudes; ones if None.
        max_bin: number of low bins the network sees (the bandwidth); all bins if None.
    """

    def __init__(
        self,
        targets: list[str] | tuple[str, ...],
        nb_bins: int = 2049,
        nb_channels: int = 2,
        hidden_size: int = 512,
        nb_layers: int = 3,
        unidirectional: bool = False,
        input_mean: Tensor | None = None,
        input_scale: Tensor | None = None,
        max_bin: int | None = None,
    ) -> None:
        super().__init__()
        if len(targets) < 2 or len(set(targets)) != len(targets):
            raise UmxError(f"X-UMX needs two or more distinct targets, not {list(targets)!r}")
        if not all(targets) or any("." in target for target in targets):
            # They name submodules, whose names cannot be empty or hold a dot.
            raise UmxError(f"X-UMX target names must be non-empty and dot-free: {list(targets)!r}")
        self.targets = list(targets)
        self.nb_output_bins = nb_bins
        self.nb_bins = max_bin or nb_bins
        self.nb_channels = nb_channels
        self.hidden_size = hidden_size

        mean = torch.zeros(self.nb_bins) if input_mean is None else -input_mean[: self.nb_bins]
        scale = (
            torch.ones(self.nb_bins) if input_scale is None else 1.0 / input_scale[: self.nb_bins]
        )
        self.layer_enc = nn.ModuleDict()
        self.layer_lstm = nn.ModuleDict()
        self.layer_dec = nn.ModuleDict()
        self.mean_scale = nn.ParameterDict()
        for target in self.targets:
            self.layer_enc[target] = _Encoder(self.nb_bins * nb_channels, hidden_size)
            self.layer_lstm[target] = nn.LSTM(
                input_size=hidden_size,
                hidden_size=hidden_size if unidirectional else hidden_size // 2,
                num_layers=nb_layers,
                bidirectional=not unidirectional,
                dropout=LSTM_DROPOUT if nb_layers > 1 else 0.0,
            )
            self.layer_dec[target] = _Decoder(hidden_size, self.nb_output_bins * nb_channels)
            self.mean_scale[f"input_mean_{target}"] = nn.Parameter(mean.float().clone())
            self.mean_scale[f"input_scale_{target}"] = nn.Parameter(scale.float().clone())
            self.mean_scale[f"output_mean_{target}"] = nn.Parameter(torch.ones(nb_bins))
            self.mean_scale[f"output_scale_{target}"] = nn.Parameter(torch.ones(nb_bins))
        self._memo: tuple[Tensor, int | None, LSTMState | None, Tensor, LSTMState] | None = None

    @property
    def unidirectional(self) -> bool:
        return not self.layer_lstm[self.targets[0]].bidirectional

    @property
    def nb_layers(self) -> int:
        return self.layer_lstm[self.targets[0]].num_layers

    def forward(self, x: Tensor) -> Tensor:
        """Estimate every target's magnitude spectrogram.

        Args:
            x: mixture magnitudes, `(nb_samples, nb_channels, nb_bins, nb_frames)`.

        Returns:
            target magnitudes, `(nb_targets, nb_samples, nb_channels, nb_bins, nb_frames)`.
        """
        return self._run(x, None)[0]

    def stream(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """Estimate every target's magnitudes for the next frames of a stream (causal models).

        As `OpenUnmix.stream`: carrying the state between calls gives the output of one
        `forward` over all frames.

        Args:
            x: the next frames' mixture magnitudes, `(nb_samples, nb_channels, nb_bins,
                nb_frames)`; `nb_frames` may be 0.
            state: the state returned by the call on the previous frames; None at the start.

        Returns:
            the target magnitudes, `(nb_targets, nb_samples, nb_channels, nb_bins, nb_frames)`,
            and the state of every target's LSTM, `(h, c)`, each `(nb_targets * nb_layers,
            nb_samples, hidden_size)`, target after target.

        Raises:
            UmxError: the model is bidirectional.
        """
        self.require_causal()
        if x.shape[-1] == 0:
            if state is None:
                zeros = x.new_zeros(
                    len(self.targets) * self.nb_layers, x.shape[0], self.hidden_size
                )
                state = (zeros, zeros.clone())
            return x.expand(len(self.targets), *x.shape).clone(), state
        return self._run(x, state)

    require_causal = OpenUnmix.require_causal

    def target_view(self, target: str) -> CrossUnmixTarget:
        """The model of one target, called as an `OpenUnmix` is (see `CrossUnmixTarget`)."""
        return CrossUnmixTarget(self, self.targets.index(target))

    def estimate(self, x: Tensor, state: LSTMState | None) -> tuple[Tensor, LSTMState]:
        """`stream` (or `forward` when `state` is None and the model is bidirectional), reusing
        the last result when called again on the same unchanged input and state in evaluation
        mode without gradients, so that the per-target views of one separation run the
        network once. (The weights are frozen then: `freeze`.)"""
        memo = self._memo
        if (
            memo is not None
            and memo[0] is x
            and memo[1] == _version(x)
            and memo[2] is state
            and not (self.training or torch.is_grad_enabled())
        ):
            return memo[3], memo[4]
        if self.unidirectional:
            y, new_state = self.stream(x, state)
        else:
            y, new_state = self._run(x, None)
        inference = not (self.training or torch.is_grad_enabled())
        self._memo = (x, _version(x), state, y, new_state) if inference else None
        return y, new_state

    def _run(self, x: Tensor, state: LSTMState | None) -> tuple[Tensor, LSTMState]:
        """`forward` from the LSTM states `state`; returns the output and the final states."""
        mix = x.permute(3, 0, 1, 2)  # (nb_frames, nb_samples, nb_channels, nb_bins)
        nb_frames, nb_samples, nb_channels, _ = mix.shape
        flat = mix[..., : self.nb_bins].reshape(nb_frames * nb_samples, -1)
        states = [None] * len(self.targets) if state is None else _split_state(state, self)
        encoded = []
        for target in self.targets:
            mean = self.mean_scale[f"input_mean_{target}"].repeat(nb_channels)
            scale = self.mean_scale[f"input_scale_{target}"].repeat(nb_channels)
            h = self.layer_enc[target]((flat + mean) * scale)
            encoded.append(torch.tanh(h).reshape(nb_frames, nb_samples, self.hidden_size))
        bridge = torch.stack(encoded).mean(0)  # first bridging path
        joined, new_states = 0.0, []
        for target, h, target_state in zip(self.targets, encoded, states, strict=True):
            lstm_out, target_state = self.layer_lstm[target](bridge, target_state)
            joined = joined + torch.cat([h, lstm_out], dim=-1)
            new_states.append(target_state)
        joined = (joined / len(self.targets)).reshape(-1, 2 * self.hidden_size)  # second path
        shape = (nb_frames, nb_samples, nb_channels, self.nb_output_bins)
        outputs = []
        for target in self.targets:
            mask = self.layer_dec[target](joined).reshape(shape)
            mask = mask * self.mean_scale[f"output_scale_{target}"]
            outputs.append(F.relu(mask + self.mean_scale[f"output_mean_{target}"]) * mix)
        h_all = torch.cat([s[0] for s in new_states])
        c_all = torch.cat([s[1] for s in new_states])
        return torch.stack(outputs).permute(0, 2, 3, 4, 1), (h_all, c_all)


class CrossUnmixTarget(_Freezable):
    """One target of a `CrossUnmix`, with `OpenUnmix`'s interface, so that the separator, the
    streaming engine and the model tools treat X-UMX as one model per target.

    The views of one network share it: called one after the other on the same input (and, when
    streaming, the same state, which is the whole network's), the network runs once and each
    view takes its target's part.

    Args:
        net: the whole X-UMX network.
        index: the target's position in `net.targets`.
    """

    def __init__(self, net: CrossUnmix, index: int) -> None:
        super().__init__()
        self.net = net
        self.index = index
        self.nb_bins = net.nb_bins
        self.nb_output_bins = net.nb_output_bins
        self.nb_channels = net.nb_channels
        self.hidden_size = net.hidden_size

    @property
    def unidirectional(self) -> bool:
        return self.net.unidirectional

    @property
    def nb_layers(self) -> int:
        """Rows of the LSTM state a view carries, `OpenUnmix`'s `nb_layers`: the whole
        network's, `nb_targets * nb_layers` (see `CrossUnmix.stream`)."""
        return len(self.net.targets) * self.net.nb_layers

    def require_causal(self, name: str = "the model") -> None:
        """Refuse a bidirectional network where only past frames may be used (see `OpenUnmix`)."""
        self.net.require_causal(name)

    def forward(self, x: Tensor) -> Tensor:
        """The target's magnitudes `(nb_samples, nb_channels, nb_bins, nb_frames)` for mixture
        magnitudes of the same shape."""
        return self.net.estimate(x, None)[0][self.index]

    def stream(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """As `OpenUnmix.stream`; the state is the whole network's (see `CrossUnmix.stream`)."""
        self.require_causal()
        y, state = self.net.estimate(x, state)
        return y[self.index], state


class _Encoder(nn.Module):
    """fc1 and bn1 of one target (asteroid's names: `enc.0`, `enc.1`)."""

    def __init__(self, nb_inputs: int, hidden_size: int) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.Linear(nb_inputs, hidden_size, bias=False), nn.BatchNorm1d(hidden_size)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.enc(x)


class _Decoder(nn.Module):
    """fc2, bn2, ReLU, fc3 and bn3 of one target (asteroid's names: `dec.0` to `dec.4`)."""

    def __init__(self, hidden_size: int, nb_outputs: int) -> None:
        super().__init__()
        self.dec = nn.Sequential(
            nn.Linear(2 * hidden_size, hidden_size, bias=False),
            nn.BatchNorm1d(hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, nb_outputs, bias=False),
            nn.BatchNorm1d(nb_outputs),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.dec(x)


def _version(x: Tensor) -> int | None:
    """The version counter of `x` (bumped by in-place changes); None for inference tensors,
    which have none: outside inference mode they cannot change in place."""
    return None if x.is_inference() else x._version


def _split_state(state: LSTMState, net: CrossUnmix) -> list[LSTMState]:
    """The joint `(h, c)` of `CrossUnmix.stream` → one `(h, c)` per target."""
    h, c = (part.split(net.nb_layers) for part in state)
    return list(zip(h, c, strict=True))
