"""X-UMX (`umx.model.CrossUnmix`) against asteroid's implementation, its checkpoints and losses.

asteroid 0.7.0 is a test-only dependency (see .ci/run); its `XUMX` refuses torch >= 2.0 and its
`BrokenXUMX` is the same network, so the comparison builds `BrokenXUMX` with random weights and
compares the magnitude path. asteroid imports `huggingface_hub` at module level only to name
download locations: `tests/asteroid_shims` stands in for it.
"""

import sys
from pathlib import Path

import pytest
import torch

from umx.errors import UmxError
from umx.model import CrossUnmix
from umx.modeldir import save_separator
from umx.separator import Separator
from umx.stream.engine import separate_causal
from umx.transforms import magnitude, stft
from umx.xumx_checkpoints import load_xumx, save_xumx, xumx_file, xumx_separator
from umx.zoo import load_separator

TARGETS = ["bass", "drums", "vocals", "other"]
SHIMS = str(Path(__file__).parent / "asteroid_shims")


@pytest.fixture(scope="module")
def x_umx_module():
    """asteroid's X-UMX module, or a skip when asteroid is not installed."""
    sys.path.insert(0, SHIMS)
    try:
        return pytest.importorskip("asteroid.models.x_umx")
    finally:
        sys.path.remove(SHIMS)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights and batch-norm statistics far from their initial values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name.endswith("window"):
                continue
            values = torch.rand(tensor.shape, generator=generator)
            tensor.copy_(0.5 + values if "running_var" in name or "scale" in name else values - 0.4)


def _asteroid_pair(x_umx_module, *, nb_channels=2, unidirectional=False, seed=0):
    """asteroid's BrokenXUMX with random weights and a `CrossUnmix` loaded from its state dict."""
    reference = x_umx_module.BrokenXUMX(
        TARGETS,
        window_length=512,
        in_chan=512,
        n_hop=128,
        hidden_size=24,
        nb_channels=nb_channels,
        sample_rate=16000,
        nb_layers=2,
        max_bin=180,
        bidirectional=not unidirectional,
    )
    _randomise(reference, seed)
    reference.eval()
    ours = CrossUnmix(
        TARGETS, 257, nb_channels, 24, nb_layers=2, unidirectional=unidirectional, max_bin=180
    )
    state = {
        key: value for key, value in reference.state_dict().items() if not key.endswith("window")
    }
    ours.load_state_dict(state, strict=True)
    return reference, ours.eval()


@pytest.mark.parametrize(("nb_channels", "unidirectional"), [(2, False), (1, False), (2, True)])
@pytest.mark.filterwarnings("ignore:stft with return_complex=False:UserWarning")  # the reference's
def test_magnitudes_equal_asteroid(x_umx_module, nb_channels, unidirectional):
    reference, ours = _asteroid_pair(
        x_umx_module, nb_channels=nb_channels, unidirectional=unidirectional
    )
    audio = torch.randn(
        3, 2 if nb_channels == 2 else 1, 4000, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        expected, _ = reference(audio)  # (nb_targets, nb_frames, nb_samples, nb_channels, nb_bins)
        mix = magnitude(stft(audio, 512, 128), mono=nb_channels == 1)
        got = ours(mix)
    expected = expected.permute(0, 2, 3, 4, 1)
    assert got.shape == expected.shape == (4, 3, nb_channels, 257, 32)
    assert float(expected.abs().max()) > 1.0  # far from a trivial (all-zero) mask
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _small_net(*, unidirectional=False, seed=0) -> CrossUnmix:
    torch.manual_seed(seed)
    net = CrossUnmix(TARGETS, 257, 2, 16, nb_layers=2, unidirectional=unidirectional, max_bin=200)
    _randomise(net, seed)
    return net.freeze()


def test_stream_in_pieces_equals_forward():
    net = _small_net(unidirectional=True)
    mix = torch.rand(2, 2, 257, 23, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = net(mix)
        pieces, state = [], None
        for start, stop in [(0, 1), (1, 1), (1, 9), (9, 23)]:
            piece, state = net.stream(mix[..., start:stop], state)
            pieces.append(piece)
    assert state[0].shape == (4 * 2, 2, 16)
    torch.testing.assert_close(torch.cat(pieces, dim=-1), whole, atol=1e-5, rtol=1e-5)


def test_bidirectional_net_refuses_to_stream():
    with pytest.raises(UmxError, match="bidirectional LSTM"):
        _small_net().stream(torch.rand(1, 2, 257, 3))


class _Select(torch.nn.Module):
    """One target of a whole forward pass, without the views' sharing."""

    def __init__(self, net, index):
        super().__init__()
        self.net, self.index = net, index

    def forward(self, x):
        return self.net(x)[self.index]


@pytest.mark.parametrize("niter", [0, 1])
def test_separator_with_target_views_runs_the_network_once(niter):
    net = _small_net()
    calls = []
    net.layer_enc["bass"].register_forward_hook(lambda *_: calls.append(1))
    options = {"sample_rate": 16000, "n_fft": 512, "n_hop": 128, "niter": niter}
    audio = torch.randn(2, 2, 8000, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        stems = Separator({t: net.target_view(t) for t in TARGETS}, **options)(audio)
        assert len(calls) == 1
        selected = {t: _Select(net, i) for i, t in enumerate(TARGETS)}
        expected = Separator(selected, **options)(audio)
    assert len(calls) == 1 + len(TARGETS)
    assert stems.shape == (2, 4, 2, 8000)
    assert float(stems.std()) > 0.01
    torch.testing.assert_close(stems, expected, atol=1e-6, rtol=0)


class _SelectStream(_Select):
    """One target of a causal network, streaming with its own copy of the whole state."""

    unidirectional = True

    def require_causal(self, name="the model"):
        self.net.require_causal(name)

    def stream(self, x, state=None):
        y, state = self.net.stream(x, state)
        return y[self.index], state


def test_streaming_engine_runs_a_causal_network_once_per_block():
    net = _small_net(unidirectional=True, seed=13)
    calls = []
    net.layer_enc["bass"].register_forward_hook(lambda *_: calls.append(1))
    options = {"sample_rate": 16000, "n_fft": 512, "n_hop": 128, "niter": 1}
    audio = torch.randn(2, 6000, generator=torch.Generator().manual_seed(14))
    views = Separator({t: net.target_view(t) for t in TARGETS}, **options)
    stems = separate_causal(views, audio)
    assert len(calls) == 1
    selected = Separator({t: _SelectStream(net, i) for i, t in enumerate(TARGETS)}, **options)
    expected = separate_causal(selected, audio)
    assert stems.shape == (4, 2, 6000) and float(stems.std()) > 0.01
    torch.testing.assert_close(stems, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("unidirectional", [False, True])
def test_onnx_graph_of_a_target_view_equals_torch(unidirectional):
    pytest.importorskip("onnxruntime")
    from umx.onnx.runtime import OnnxModel

    view = _small_net(unidirectional=unidirectional, seed=15).target_view("vocals")
    graph = OnnxModel.from_model(view)
    mix = torch.rand(1, 2, 257, 30, generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        expected = view(mix)
        torch.testing.assert_close(graph(mix), expected, atol=1e-5, rtol=1e-5)
        if unidirectional:
            first, state = graph.stream(mix[..., :11])
            rest, _ = graph.stream(mix[..., 11:], state)
            torch.testing.assert_close(torch.cat([first, rest], -1), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("unidirectional", [False, True])
def test_onnxruntime_separates_each_target_of_a_network_as_torch(unidirectional):
    """The views share one network's weights: the graph cache must still tell them apart."""
    pytest.importorskip("onnxruntime")
    from umx.onnx.runtime import onnx_separator

    net = _small_net(unidirectional=unidirectional, seed=17)
    options = {"sample_rate": 16000, "n_fft": 512, "n_hop": 128, "niter": 0}
    views = Separator({t: net.target_view(t) for t in TARGETS}, **options)
    audio = torch.randn(1, 2, 8000, generator=torch.Generator().manual_seed(18))
    with torch.inference_mode():
        expected = views(audio)
        for _ in range(2):  # the graphs made, then read back from the cache
            stems = onnx_separator(views)(audio)
            torch.testing.assert_close(stems, expected, atol=1e-4, rtol=0)
    assert min(float((stems[:, i] - stems[:, 0]).abs().max()) for i in (1, 2, 3)) > 1e-3


def test_cross_unmix_needs_distinct_targets():
    with pytest.raises(UmxError, match="two or more distinct targets"):
        CrossUnmix(["vocals", "vocals"], 257)
    with pytest.raises(UmxError, match="non-empty and dot-free"):
        CrossUnmix(["lead.vocals", "rest"], 257)


def _asteroid_checkpoint(reference, path):
    """Save `reference` as asteroid's `serialize` does (without its pytorch_lightning import)."""
    torch.save(
        {
            "model_name": "XUMX",
            "state_dict": reference.state_dict(),
            "model_args": reference.get_model_args(),
            "infos": {"software_versions": {"torch_version": torch.__version__}},
        },
        path,
    )
    return path


def test_asteroid_checkpoint_loads_and_gives_its_magnitudes(x_umx_module, tmp_path):
    reference, _ = _asteroid_pair(x_umx_module, seed=5)
    path = _asteroid_checkpoint(reference, tmp_path / "pretrained_xumx.pth")
    checkpoint = load_xumx(path)
    assert (checkpoint.sample_rate, checkpoint.n_fft, checkpoint.n_hop) == (16000.0, 512, 128)
    assert checkpoint.net.targets == TARGETS and not checkpoint.net.training
    audio = torch.randn(2, 2, 3000, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = reference(audio)[0].permute(0, 2, 3, 4, 1)
        got = checkpoint.net(magnitude(stft(audio, 512, 128)))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_saved_checkpoint_loads_into_asteroid(x_umx_module, tmp_path):
    net = _small_net(seed=7)
    save_xumx(net, tmp_path / "xumx.pth", sample_rate=16000, n_fft=512, n_hop=128)
    saved = torch.load(tmp_path / "xumx.pth", weights_only=True)
    reference = x_umx_module.BrokenXUMX(**saved["model_args"]).eval()
    reference.load_state_dict(saved["state_dict"], strict=True)
    audio = torch.randn(1, 2, 3000, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = reference(audio)[0].permute(0, 2, 3, 4, 1)
        got = load_xumx(tmp_path).net(magnitude(stft(audio, 512, 128)))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert xumx_file(tmp_path) == tmp_path / "xumx.pth"
    assert xumx_file(tmp_path / "xumx.pth") == tmp_path / "xumx.pth"


def test_xumx_separator_separates_selected_targets(tmp_path):
    save_xumx(_small_net(seed=9), tmp_path / "xumx.pth", sample_rate=16000, n_fft=512, n_hop=128)
    separator = xumx_separator(tmp_path / "xumx.pth", ["vocals", "bass"], residual="rest")
    assert separator.targets == ["vocals", "bass", "rest"]
    audio = torch.randn(1, 2, 16000, generator=torch.Generator().manual_seed(10))
    stems = separator.separate(audio, segment=0.5, overlap=0.1)
    assert stems.shape == (1, 3, 2, 16000)
    assert bool(torch.isfinite(stems).all()) and float(stems[:, :2].std()) > 0.01
    torch.testing.assert_close(stems.sum(1), audio, atol=1e-4, rtol=0)  # the residual completes
    with pytest.raises(UmxError, match="--residual drums is already a target"):
        xumx_separator(tmp_path / "xumx.pth", ["vocals", "bass"], residual="drums")


def _edited_checkpoint(tmp_path, edit):
    save_xumx(_small_net(), tmp_path / "good.pth", sample_rate=16000, n_fft=512, n_hop=128)
    checkpoint = torch.load(tmp_path / "good.pth", weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, tmp_path / "bad.pth")
    return tmp_path / "bad.pth"


def _set_nan(checkpoint):
    checkpoint["state_dict"]["layer_dec.bass.dec.0.weight"][0, 0] = float("nan")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("model_args"), "is not an X-UMX checkpoint"),
        (lambda c: c.update(model_name="ConvTasNet"), "not an X-UMX model"),
        (lambda c: c["model_args"].update(sources=["bass"]), "two or more target names"),
        (lambda c: c["model_args"].update(sources=["../x", "a", "b", "c"]), "unsafe target name"),
        (
            lambda c: c["model_args"].update(sources=["a.b", "a", "b", "c"]),
            "target names cannot hold one",
        ),
        (lambda c: c["model_args"].update(window_length=256), "window of 256 samples"),
        (lambda c: c["model_args"].update(spec_power=2), "power 2"),
        (lambda c: c["model_args"].update(n_hop=0), "'nhop'"),
        (lambda c: c["model_args"].update(sample_rate=float("nan")), "'sample_rate'"),
        (lambda c: c["model_args"].update(hidden_size=32), "hidden_size 32 in its model_args"),
        (lambda c: c["model_args"].update(in_chan=1024, window_length=1024), "513 bins"),
        (_set_nan, "NaN or infinite"),
        (lambda c: c["state_dict"].pop("layer_dec.drums.dec.4.bias"), "lacks layer_dec.drums"),
    ],
)
def test_bad_checkpoints_are_refused_in_one_line(tmp_path, edit, message):
    with pytest.raises(UmxError, match=message) as error:
        load_xumx(_edited_checkpoint(tmp_path, edit))
    assert "\n" not in str(error.value)


def test_checkpoint_with_code_is_refused(tmp_path):
    torch.save({"state_dict": {}, "model_args": Path("x")}, tmp_path / "code.pth")
    with pytest.raises(UmxError, match="not a readable torch file"):
        load_xumx(tmp_path / "code.pth")


def test_load_separator_takes_an_xumx_checkpoint_or_its_directory(tmp_path):
    save_xumx(_small_net(seed=11), tmp_path / "xumx.pth", sample_rate=16000, n_fft=512, n_hop=128)
    audio = torch.randn(1, 2, 8000, generator=torch.Generator().manual_seed(12))
    by_dir = load_separator(tmp_path, niter=0)
    by_file = load_separator(str(tmp_path / "xumx.pth"), targets=["drums"], niter=0)
    assert by_dir.targets == TARGETS and by_dir.model_name == str(tmp_path)
    assert by_file.targets == ["drums"]
    with torch.inference_mode():
        stems = by_dir.separate(audio, segment=None)
        drums = by_file.separate(audio, segment=None)
    torch.testing.assert_close(drums[:, 0], stems[:, 1], atol=1e-6, rtol=0)


def test_an_xumx_separator_is_not_saved_as_target_models(tmp_path):
    net = _small_net()
    separator = Separator({t: net.target_view(t) for t in TARGETS}, n_fft=512, n_hop=128)
    with pytest.raises(UmxError, match="an X-UMX separator is one network"):
        save_separator(separator, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_a_folder_holding_xumx_and_open_unmix_models_is_refused(tmp_path):
    """Two trainings into one folder: which model separates would be a guess."""
    save_separator(load_separator("umxsynth", targets=["vocals"]), tmp_path)
    save_xumx(_small_net(), tmp_path / "xumx.pth", sample_rate=16000, n_fft=512, n_hop=128)
    with pytest.raises(
        UmxError, match=r"holds an X-UMX model \(xumx.pth\) and Open-Unmix models \(vocals.pth\)"
    ):
        load_separator(tmp_path)
    (tmp_path / "vocals.pth").unlink()
    assert load_separator(tmp_path).targets == TARGETS
