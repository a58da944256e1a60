"""Every example in the README runs, against small stand-ins for the named models.

The published weights cannot be downloaded in tests, so each zoo name used by the README is
replaced by a bundled stand-in of the same name: a small random model in the official layout.
Commands that need a dataset (`sh` blocks: training, evaluation, synthesis) are exercised on
generated data by test_train.py, test_evaluate.py and test_synth.py.
"""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import umx.zoo.registry
from umx.cli import main
from umx.model import OpenUnmix
from umx.modeldir import save_separator
from umx.separator import Separator
from umx.zoo import MODELS, ZooEntry

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TARGETS = ("vocals", "drums", "bass", "other")


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


@pytest.fixture
def stand_in_models(tmp_path, monkeypatch):
    """Every zoo name becomes a bundled small 44.1 kHz model."""
    monkeypatch.setattr(umx.zoo.registry, "PRETRAINED_DIR", tmp_path / "pretrained")
    torch.manual_seed(0)
    for name, entry in list(MODELS.items()):
        models = {
            t: OpenUnmix(257, entry.nb_channels, 8, max_bin=180).freeze() for t in entry.targets
        }
        separator = Separator(
            models,
            sample_rate=entry.sample_rate,
            n_fft=512,
            n_hop=128,
            nb_channels=entry.nb_channels,
        )
        save_separator(separator, tmp_path / "pretrained" / name)
        stand_in = ZooEntry(
            name=name,
            description=entry.description,
            license=entry.license,
            weights={t: f"{t}.pth" for t in entry.targets},
            sample_rate=entry.sample_rate,
            n_fft=512,
            n_hop=128,
            nb_channels=entry.nb_channels,
        )
        monkeypatch.setitem(MODELS, name, stand_in)


def test_ci_runs_the_readme_setup_and_test_commands():
    setup, main_job, tests = (block.strip() for block in blocks("bash")[:3])
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup in ci
    assert tests in ci
    assert main_job.startswith(".venv/bin/umx ")


def test_python_examples_run(stand_in_models):
    for code in blocks("python"):
        exec(compile(code, "README.md", "exec"), {})


def test_command_line_examples_run(stand_in_models, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((3 * 44100, 2)) * 0.1).astype(np.float32)
    commands = [line for block in blocks("bash")[1:] for line in block.splitlines()]
    commands = [shlex.split(line, comments=True) for line in commands if "umx " in line]
    for number, argv in enumerate(commands):
        argv = argv[1:]  # drop the program name
        (tmp_path / str(number)).mkdir()
        monkeypatch.chdir(tmp_path / str(number))  # each example as on a fresh machine
        for arg in argv:
            if re.fullmatch(r"[\w./-]+\.(wav|flac|mp3)", arg) and not Path(arg).exists():
                Path(arg).parent.mkdir(parents=True, exist_ok=True)
                sf.write(arg, audio, 44100)
        assert main(argv) == 0, argv
    assert capsys.readouterr().out


def test_main_job_separates_the_example_with_the_bundled_model(tmp_path, monkeypatch, capsys):
    """The README's main command, exactly, with the real bundled model and no network."""
    main_job = shlex.split(blocks("bash")[1].strip())
    example = ROOT / main_job[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("network used"))
    assert main([str(example), *main_job[2:]]) == 0
    out = capsys.readouterr()
    assert out.err.count("the bundled demo model umxsynth") == 1  # said once, on stderr
    mixture, rate = sf.read(example, dtype="float32")
    stems = {}
    for target in TARGETS:
        stem, stem_rate = sf.read(tmp_path / "separated" / example.stem / f"{target}.wav")
        assert stem_rate == rate and stem.shape == mixture.shape
        stems[target] = stem
    # Wiener EM (niter 1) keeps the stems' sum close to the mixture, not equal: 2 % RMS measured
    residual = sum(stems.values()) - mixture
    assert np.sqrt(np.mean(residual**2) / np.mean(mixture**2)) < 0.04
    # a trained model, not a trivial split: every stem carries its own part of the song
    for stem in stems.values():
        assert 0.02 < np.sqrt(np.mean(stem**2)) / np.sqrt(np.mean(mixture**2)) < 0.98
