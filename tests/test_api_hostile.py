"""The public entry points besides `umx.separate` refuse what it refuses, with its messages:
`Separator.separate`, `Separator.__call__`, `Separator.iter_chunks`, `StreamingSeparator`,
`separate_causal`, `load_separator` and `separate_file` (integer PCM, samples that are not audio,
stems that are not a result, a separator in training mode, yes-or-no options given as text,
unsafe residual names, options of the wrong type)."""

import pytest
import soundfile as sf
import torch

import umx
from umx.errors import short
from umx.model import OpenUnmix
from umx.modeldir import save_separator
from umx.separator import Separator
from umx.stream.engine import StreamingSeparator, separate_causal

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


def batchnorm_state(separator):
    return {
        name: buffer.clone()
        for name, buffer in separator.named_buffers()
        if "running" in name or "num_batches" in name
    }


def test_an_object_in_a_message_stays_on_one_line(separator):
    model = separator.target_models["vocals"]
    with pytest.raises(umx.UmxError) as error:
        umx.separate(mixture(), RATE, model=model)
    assert str(error.value) == "a model is a name or a directory, not OpenUnmix"
    assert short.repr(model) == "OpenUnmix"
    assert short.repr([model, "a\nb"]) == "[OpenUnmix, 'a\\nb']"
    assert short.repr(torch.zeros(2, 2)) == "Tensor"
    assert short.repr(torch.tensor(0.5)) == "tensor(0.5000)"


@pytest.fixture(scope="module")
def song(tmp_path_factory, separator):
    root = tmp_path_factory.mktemp("api-hostile")
    sf.write(root / "song.wav", mixture().T.numpy(), RATE, subtype="FLOAT")
    save_separator(separator, root / "model")
    return root
