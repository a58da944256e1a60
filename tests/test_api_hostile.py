"""The public entry points besides `umx.separate` refuse what it refuses, with its messages:
`Separator.separate`, `Separator.__call__`, `Separator.iter_chunks`, `StreamingSeparator`,
`separate_causal`, `load_separator` and `separate_file` (integer PCM, samples that are not audio,
stems that are not a result, a separator in training mode, yes-or-no options given as text,
unsafe residual names, options of the wrong type)."""

import copy
import math

import numpy as np
import pytest
import soundfile as sf
import torch

import umx
from umx.api import separate_file
from umx.errors import short
from umx.model import OpenUnmix
from umx.modeldir import save_separator
from umx.separator import Separator
from umx.stream.engine import StreamingSeparator, separate_causal
from umx.zoo.download import is_offline

RATE = 16000
INT16 = r"must hold real floating-point samples in \[-1, 1\], not torch.int16 \(convert integer"


def small_separator(causal=False, seed=0, **options):
    """Two stereo targets at 16 kHz (n_fft 512) whose BatchNorm layers have running
    statistics far from their initial ones, so that training mode changes the stems."""
    torch.manual_seed(seed)
    models = {}
    for target in ("vocals", "drums"):
        model = OpenUnmix(257, 2, 16, max_bin=200, unidirectional=causal)
        with torch.no_grad():
            model.output_mean.uniform_(0.2, 0.8)
            for layer in (model.bn1, model.bn2, model.bn3):
                layer.running_mean.uniform_(-1, 1)
                layer.running_var.uniform_(0.5, 2)
        models[target] = model.freeze()
    return Separator(models, sample_rate=RATE, n_fft=512, n_hop=128, **options)


@pytest.fixture(scope="module")
def separator():
    return small_separator()


@pytest.fixture(scope="module")
def causal():
    return small_separator(causal=True)


def mixture(nb_timesteps=RATE, seed=1):
    """Stereo noise at -10 dBFS, `(nb_channels, nb_timesteps)`."""
    return 0.3 * torch.randn(2, nb_timesteps, generator=torch.Generator().manual_seed(seed))


# How each entry point separates a mixture `(nb_channels, nb_timesteps)`.
OFFLINE = {
    "umx.separate": lambda sep, x: umx.separate(x, RATE, model=sep),
    "Separator.separate": lambda sep, x: sep.separate(x[None], segment=None),
    "Separator.__call__": lambda sep, x: sep(x[None]),
    "Separator.iter_chunks": lambda sep, x: list(sep.iter_chunks(x[None], 0.5, 0.1)),
}
CAUSAL = {
    "StreamingSeparator.process": lambda sep, x: StreamingSeparator(sep).process(x),
    "StreamingSeparator.flush": lambda sep, x: StreamingSeparator(sep).flush(x),
    "separate_causal": separate_causal,
}


def flat(stems):
    """The stems an entry point gave as one tensor: `umx.separate`'s stacked, the pieces of
    `iter_chunks` concatenated."""
    if isinstance(stems, dict):
        return torch.stack(list(stems.values()))
    return torch.cat(stems, -1) if isinstance(stems, list) else stems


def entry_points(names):
    return pytest.mark.parametrize("entry", names, ids=names)


@entry_points([*OFFLINE, *CAUSAL])
def test_integer_pcm_is_refused_as_umx_separate_refuses_it(separator, causal, entry):
    """int16 samples taken as floats gave stems 32768 times too loud, without an error."""
    pcm = (mixture() * 32767).short()
    run = OFFLINE.get(entry) or CAUSAL[entry]
    with pytest.raises(TypeError, match=INT16):
        run(causal if entry in CAUSAL else separator, pcm)


@entry_points([*OFFLINE, *CAUSAL])
def test_numpy_and_float64_are_taken_as_umx_separate_takes_them(separator, causal, entry):
    run = OFFLINE.get(entry) or CAUSAL[entry]
    model = causal if entry in CAUSAL else separator
    x = mixture()
    expected = flat(run(model, x))
    for other in (x.numpy(), x.double(), x.double().numpy()):
        got = flat(run(model, other))
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert float(expected.abs().max()) > 0.01


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (math.nan, "a NaN sample at 0.250 s"),
        (math.inf, "an infinite"),
        (1e30, r"the sample 1e\+30"),
    ],
)
@entry_points(list(OFFLINE))
def test_samples_that_are_not_audio_are_refused_by_the_separator(separator, entry, value, message):
    """Separator.separate and __call__ returned NaN stems for NaN, infinite or 1e30 samples."""
    x = mixture()
    x[1, RATE // 4] = value
    with pytest.raises(umx.UmxError, match=f"^audio: {message}.* is not audio"):
        OFFLINE[entry](separator, x)


@entry_points(list(OFFLINE))
def test_stems_with_nan_are_refused_by_the_separator(entry):
    broken = small_separator()
    with torch.no_grad():
        broken.target_models["vocals"].fc3.weight[0, 0] = math.nan
    with pytest.raises(umx.UmxError, match=r"^audio: the stems came out with NaN or infinite"):
        OFFLINE[entry](broken, mixture())


def batchnorm_state(separator):
    return {
        name: buffer.clone()
        for name, buffer in separator.named_buffers()
        if "running" in name or "num_batches" in name
    }


@entry_points([*OFFLINE, *CAUSAL])
def test_a_separator_in_training_mode_is_refused_and_left_unchanged(entry):
    """In training mode BatchNorm normalised with the mixture's statistics (other stems) and
    overwrote its running statistics, inference mode or not: the model stayed changed."""
    model = small_separator(causal=entry in CAUSAL)
    run = OFFLINE.get(entry) or CAUSAL[entry]
    x = mixture()
    before = flat(run(model, x))
    state = batchnorm_state(model)
    model.train()
    with pytest.raises(umx.UmxError, match=r"is in training mode.*call separator.eval\(\) first"):
        run(model, x)
    model.target_models["vocals"].eval()  # one target model left training is refused too
    with pytest.raises(umx.UmxError, match="is in training mode"):
        run(model, x)
    after = batchnorm_state(model)
    assert all(torch.equal(state[name], after[name]) for name in state)
    model.eval()
    assert torch.equal(before, flat(run(model, x)))


def test_a_separator_of_frozen_models_is_ready_whatever_its_own_mode(separator):
    """A separator built by hand is in training mode (nn.Module's default), but has no layer
    of its own that training changes: its frozen models separate as loaded ones do."""
    built = Separator(dict(separator.target_models), sample_rate=RATE, n_fft=512, n_hop=128)
    assert built.training
    x = mixture()[None]
    assert torch.equal(built.separate(x), copy.deepcopy(built).eval().separate(x))


def test_a_meta_tensor_is_refused_in_one_line(separator):
    with pytest.raises(TypeError, match=r"^audio is a meta tensor, which holds no samples$"):
        umx.separate(torch.empty(2, 100, device="meta"), RATE)
    with pytest.raises(TypeError, match=r"^audio is a meta tensor"):
        separator.separate(torch.empty(1, 2, 100, device="meta"))


def test_half_weights_are_refused_in_one_line_and_double_weights_separate(separator):
    half = copy.deepcopy(separator).half()
    with pytest.raises(umx.UmxError, match=r"^the separator's weights are torch.float16.*float"):
        umx.separate(mixture(), RATE, model=half)
    double = copy.deepcopy(separator).double()  # float64 weights separate float64 mixtures
    stems = umx.separate(mixture(), RATE, model=double)
    expected = umx.separate(mixture(), RATE, model=separator)
    for name, stem in stems.items():
        torch.testing.assert_close(stem.float(), expected[name], atol=1e-5, rtol=0)


def test_to_dict_refuses_stems_of_another_shape(separator):
    stems = separator.separate(mixture()[None])
    assert list(separator.to_dict(stems)) == ["vocals", "drums"]
    with pytest.raises(umx.UmxError, match=r"^stems must be \(nb_samples, nb_targets=2, "):
        separator.to_dict(stems[0])
    with pytest.raises(umx.UmxError, match=r"got shape \(1, 1, 2, 16000\)"):
        separator.to_dict(stems[:, :1])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"softmask": "false"}, "^--softmask must be True or False, not 'false'$"),
        ({"softmask": "no"}, "^--softmask must be True or False, not 'no'$"),
        ({"softmask": 1}, "^--softmask must be True or False, not 1$"),
        ({"residual": ""}, "^--residual has an unsafe target name ''"),
        ({"residual": "a/b"}, "^--residual has an unsafe target name 'a/b'"),
        ({"residual": "acc\nx"}, "^--residual has an unsafe target name 'acc\\\\nx'"),
        ({"residual": 5}, "^--residual has a target name that is not a string: 5$"),
        ({"nb_channels": 2.0}, "^nb_channels must be a whole number, not 2.0$"),
        ({"nb_channels": True}, "^nb_channels must be a whole number, not True$"),
    ],
)
def test_separator_options_are_checked_as_the_command_line_checks_them(separator, options, message):
    with pytest.raises(umx.UmxError, match=message):
        Separator(dict(separator.target_models), sample_rate=RATE, n_fft=512, n_hop=128, **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"softmask": "false"}, "^--softmask must be True or False, not 'false'$"),
        ({"offline": "false"}, "^offline must be True or False, not 'false'$"),
        ({"progress": "no"}, "^progress must be True or False, not 'no'$"),
        ({"residual": ""}, "^--residual has an unsafe target name ''"),
        ({"residual": "acc\nx"}, "^--residual has an unsafe target name 'acc\\\\nx'"),
        ({"targets": "vocals"}, "^targets must be a list of names, not the text 'vocals'$"),
        ({"niter": -1}, "^--niter must be at least 0, not -1$"),
    ],
)
def test_load_separator_checks_its_options_before_any_model(options, message):
    """The text "false" was taken as true (softmask on, offline on); the options are refused
    before the model is looked for (the folder named here does not exist)."""
    with pytest.raises(umx.UmxError, match=message):
        umx.load_separator("no/such/model", **options)


def test_offline_given_as_text_is_refused():
    assert is_offline(True) and not is_offline(False)
    with pytest.raises(umx.UmxError, match=r"^offline must be True or False, not 'false'$"):
        is_offline("false")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"residual": ""}, "^--residual has an unsafe target name ''"),
        ({"residual": "a/b"}, "^--residual has an unsafe target name 'a/b'"),
        ({"targets": "vocals"}, "^targets must be a list of names, not the text 'vocals'$"),
    ],
)
def test_umx_separate_checks_names_before_any_model(options, message):
    """residual='' crashed with a size mismatch; targets='vocals' said "no target 'v'"."""
    with pytest.raises(umx.UmxError, match=message):
        umx.separate(mixture(), RATE, model="no/such/model", **options)


def test_an_object_in_a_message_stays_on_one_line(separator):
    model = separator.target_models["vocals"]
    with pytest.raises(umx.UmxError) as error:
        umx.separate(mixture(), RATE, model=model)
    assert str(error.value) == "a model is a name or a directory, not OpenUnmix"
    assert short.repr(model) == "OpenUnmix"
    assert short.repr([model, "a\nb"]) == "[OpenUnmix, 'a\\nb']"
    assert short.repr(torch.zeros(2, 2)) == "Tensor"
    assert short.repr(torch.tensor(0.5)) == "tensor(0.5000)"


def test_streaming_options_of_the_wrong_type_are_refused(causal):
    with pytest.raises(umx.UmxError, match=r"^nb_channels must be a whole number, not 2.0$"):
        StreamingSeparator(causal, nb_channels=2.0)
    with pytest.raises(TypeError, match=r"^a block must be a torch tensor or a numpy array, not"):
        StreamingSeparator(causal).process([[0.0] * 10] * 2)
    assert StreamingSeparator(causal, nb_channels=np.int64(2)).nb_channels == 2


@pytest.fixture(scope="module")
def song(tmp_path_factory, separator):
    root = tmp_path_factory.mktemp("api-hostile")
    sf.write(root / "song.wav", mixture().T.numpy(), RATE, subtype="FLOAT")
    save_separator(separator, root / "model")
    return root


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ext": ".wav"}, "^--ext '.wav' is no format umx writes: use wav, "),
        ({"ext": "WAV"}, "^--ext 'WAV' is no format umx writes"),
        ({"start": "1"}, "^--start must be a number, not '1'$"),
        ({"start": -1.0}, "^--start must be at least 0, not -1$"),
        ({"duration": 0}, "^--duration must be greater than 0, not 0$"),
        ({"duration": math.inf}, "^--duration must be a finite number, not inf$"),
        ({"clip": "nope"}, "^--clip 'nope': use rescale or clamp"),
        ({"force": "no"}, "^--force must be True or False, not 'no'$"),
    ],
)
def test_separate_file_checks_its_options_as_the_command_line_does(song, options, message):
    """ext='.wav' wrote vocals..wav; start='1' was a TypeError naming no option."""
    with pytest.raises(umx.UmxError, match=message):
        separate_file(song / "song.wav", song / "model", outdir=song / "out", **options)
    assert not (song / "out").exists()


def test_separate_file_takes_a_model_as_umx_separate_does(song, separator):
    """A model directory (or name) given as the separator is loaded, as `umx.separate` loads
    `model`; it gave AttributeError 'str' object has no attribute 'targets'."""
    by_path = separate_file(song / "song.wav", str(song / "model"), outdir=song / "by-path")
    loaded = separate_file(song / "song.wav", separator, outdir=song / "loaded")
    assert [report.path.name for report in by_path] == ["vocals.wav", "drums.wav"]
    for one, other in zip(by_path, loaded, strict=True):
        assert np.array_equal(sf.read(one.path)[0], sf.read(other.path)[0])
    assert max(report.peak for report in by_path) > 0.01
    with pytest.raises(umx.UmxError, match=r"^a model is a name or a directory, not OpenUnmix$"):
        separate_file(song / "song.wav", separator.target_models["vocals"], outdir=song / "x")
