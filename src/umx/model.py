"""The Open-Unmix network: magnitude spectrogram in, magnitude spectrogram of one target out.

The parameter names and shapes are those of the published Open-Unmix checkpoints, so their state
dicts load unchanged. The model knows nothing of waveforms: see `umx.transforms.Spectrogram`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from umx.errors import UmxError

LSTM_DROPOUT = 0.4

LSTMState = tuple[Tensor, Tensor]
"""An LSTM's `(h, c)`, each `(nb_layers, nb_samples, hidden_size)`."""


class OpenUnmix(nn.Module):
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

    def freeze(self) -> OpenUnmix:
        """Switch to inference: evaluation mode and no gradients. Returns the model."""
        for parameter in self.parameters():
            parameter.requires_grad = False
        return self.eval()

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
                "and cannot separate a stream; train a causal model with "
                "`umx train --unidirectional` (or use a causal model)"
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
