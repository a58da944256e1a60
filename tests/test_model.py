"""OpenUnmix: shapes, the official parameter layout and the mask semantics."""

import pytest
import torch

from umx.model import OpenUnmix
from umx.separator import waveform_model
from umx.transforms import bandwidth_to_max_bin

# The official state-dict layout (umxhq, umxl, umxse sizes) is checked in test_zoo.py.


def test_max_bin_from_bandwidth():
    assert bandwidth_to_max_bin(44100, 4096, 16000) == 1487
    assert bandwidth_to_max_bin(16000, 1024, 16000) == 513


@pytest.mark.parametrize("nb_channels", [1, 2])
@pytest.mark.parametrize("unidirectional", [False, True])
def test_forward_shapes(nb_channels, unidirectional):
    model = OpenUnmix(65, nb_channels, 16, unidirectional=unidirectional, max_bin=40).eval()
    x = torch.rand(3, nb_channels, 65, 11)
    y = model(x)
    assert y.shape == x.shape
    assert (y >= 0).all()


def test_unidirectional_layout_and_causality():
    model = OpenUnmix(65, 2, 16, unidirectional=True, max_bin=40).eval()
    keys = model.state_dict().keys()
    assert not any(k.endswith("_reverse") for k in keys)
    assert model.state_dict()["lstm.weight_hh_l0"].shape == (64, 16)
    assert model.fc2.weight.shape == (16, 32)
    x = torch.rand(1, 2, 65, 20)
    x2 = x.clone()
    x2[..., 10:] = torch.rand(1, 2, 65, 10)
    with torch.no_grad():
        # a causal model's first frames do not depend on later ones
        torch.testing.assert_close(model(x)[..., :10], model(x2)[..., :10])
        bidirectional = OpenUnmix(65, 2, 16, max_bin=40).eval()
        assert not torch.allclose(bidirectional(x)[..., :10], bidirectional(x2)[..., :10])


def test_output_is_a_mask_times_the_input():
    """With zero fc3 weights and zero BN shift, the mask is relu(output_mean) everywhere."""
    model = OpenUnmix(33, 2, 8, max_bin=20).eval()
    with torch.no_grad():
        model.fc3.weight.zero_()
        model.bn3.bias.zero_()
        model.output_mean.copy_(torch.linspace(-1, 2, 33))
    x = torch.rand(2, 2, 33, 7)
    expected = x * torch.linspace(-1, 2, 33).clamp(min=0)[:, None]
    torch.testing.assert_close(model(x), expected)


def test_input_statistics_are_stored_as_the_checkpoints_store_them():
    mean, scale = torch.rand(50), torch.rand(50) + 0.5
    model = OpenUnmix(65, 2, 16, max_bin=40, input_mean=mean, input_scale=scale)
    torch.testing.assert_close(model.input_mean.data, -mean[:40])
    torch.testing.assert_close(model.input_scale.data, 1 / scale[:40])


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    model = OpenUnmix(33, 1, 16, max_bin=33)
    x = torch.rand(4, 1, 33, 12)
    target = x * (torch.arange(33) < 10)[:, None]  # a low-pass "source"
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_waveform_wrapper_equals_spectrogram_model():
    from umx.transforms import magnitude, stft

    model = OpenUnmix(65, 2, 16, max_bin=40).eval()
    audio = torch.randn(2, 2, 1000)
    wrapped = waveform_model(model, n_fft=128, n_hop=32)
    with torch.no_grad():
        expected = model(magnitude(stft(audio, 128, 32)))
        torch.testing.assert_close(wrapped(audio), expected)
    assert expected.shape == (2, 2, 65, 1000 // 32 + 1)


def test_freeze_gives_eval_mode_without_gradients():
    model = OpenUnmix(65, 2, 16, max_bin=40).freeze()
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_inference_folding_equals_the_layer_by_layer_computation():
    """Without gradients, bn3 and the output scaling are folded into one affine map."""
    torch.manual_seed(1)
    model = OpenUnmix(65, 2, 16, max_bin=40)
    with torch.no_grad():
        for parameter in (model.output_scale, model.output_mean, model.bn3.weight, model.bn3.bias):
            parameter.uniform_(-1.0, 2.0)
        model.bn3.running_mean.uniform_(-1.0, 1.0)
        model.bn3.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.rand(2, 2, 65, 9)
    layer_by_layer = model(x)  # gradients enabled: the modules one by one
    assert layer_by_layer.requires_grad
    with torch.inference_mode():
        folded = model(x)
    torch.testing.assert_close(folded, layer_by_layer.detach(), rtol=1e-5, atol=1e-6)
    assert (folded == 0).any() and (folded > 0).any()  # the ReLU both cuts and passes
