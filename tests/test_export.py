"""ONNX export, the onnxruntime backend and int8 quantisation, on the bundled models.

`umxsynth` is bidirectional, `umxsynth-rt` unidirectional (it gets streaming graphs).
"""

import hashlib
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch

import umx.model
import umx.onnx.export
import umx.onnx.runtime
from processes import file_size_limit, read_only_folder
from umx.cli import main
from umx.errors import UmxError
from umx.files import written_aside
from umx.jobs import read_records
from umx.model import OpenUnmix
from umx.model_hash import export_sha256
from umx.modeldir import save_separator
from umx.onnx.export import export_model, export_onnx, model_graph, quantize_graph
from umx.onnx.folder import load_export
from umx.onnx.graphs import GraphFile
from umx.onnx.options import EXPORT_JSON, ExportOptions, require_onnx
from umx.onnx.runtime import GRAPH_CACHE, OnnxModel, onnx_separator
from umx.separator import Separator
from umx.stream.engine import StreamingSeparator, separate_causal
from umx.zoo import cache_dir, load_separator

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = (ROOT / "docs" / "deploy.md").read_text()
TARGETS = ["vocals", "drums", "bass", "other"]

# Torch (and onnxruntime, which takes torch's thread count) on one thread: these models are
# small, and on a busy machine a second thread makes every LSTM step wait for it.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mixture():
    """2 s of stereo 44.1 kHz noise and tones, `(nb_channels, nb_timesteps)`."""
    rng = np.random.default_rng(1)
    t = np.arange(88200) / 44100
    tones = np.sin(2 * np.pi * np.array([[220.0], [330.0]]) * t) * 0.3
    return torch.from_numpy((tones + rng.standard_normal((2, t.size)) * 0.05).astype(np.float32))


@pytest.fixture(scope="module")
def separators():
    """Both bundled models, niter 1, loaded once."""
    return {name: load_separator(name, offline=True) for name in ("umxsynth", "umxsynth-rt")}


def magnitudes(audio, nb_frames=None):
    """Mixture magnitudes of `audio`, `(1, nb_channels, nb_bins, nb_frames)`."""
    spec = torch.stft(
        audio, 4096, 1024, window=torch.hann_window(4096), center=True, return_complex=True
    )
    return spec.abs()[None, ..., :nb_frames]


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_export_writes_checked_graphs_and_their_description(tmp_path, mixture, capsys):
    out = tmp_path / "rt"
    code, stdout, _ = run_cli(["export", "umxsynth-rt", str(out)], capsys)
    assert code == 0
    info = json.loads((out / EXPORT_JSON).read_text())
    for target in TARGETS:  # each graph's SHA-256, recorded for `--model EXPORT_DIR`
        entry = info["targets"][target]
        for key in ("graph", "stream_graph"):
            digest = hashlib.sha256((out / entry[key]).read_bytes()).hexdigest()
            assert entry[f"{key}_sha256"] == digest
    assert list(info["targets"]) == TARGETS
    assert info["sample_rate"] == 44100.0 and info["nb_channels"] == 2
    assert (info["stft"]["n_fft"], info["stft"]["n_hop"]) == (4096, 1024)
    expected = [f"{t}{s}" for t in TARGETS for s in (".onnx", ".stream.onnx")] + [EXPORT_JSON]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert [Path(line).name for line in stdout.split()] == expected
    # each graph records the settings it was exported with, which the JSON must match
    metadata = ort.InferenceSession(out / "bass.stream.onnx").get_modelmeta().custom_metadata_map
    assert metadata == {
        "umx.target": "bass",
        "umx.graph": "stream",
        "umx.sample_rate": "44100.0",
        "umx.nb_channels": "2",
        "umx.n_fft": "4096",
        "umx.n_hop": "1024",
        "umx.quantize": "null",
        "umx.nb_bins": "2049",
        "umx.hidden_size": "128",
        "umx.nb_layers": "3",
    }

    separator = load_separator("umxsynth-rt")
    x = torch.cat([magnitudes(mixture, 30), magnitudes(mixture.flip(-1), 30)])  # 2 samples
    for target in ("vocals", "bass"):
        graph = onnx.load(out / f"{target}.onnx")
        onnx.checker.check_model(graph, full_check=True)
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == [
            "nb_samples",
            2,
            2049,
            "nb_frames",
        ]
        session = ort.InferenceSession(out / f"{target}.onnx")
        for frames in (1, 30):  # dynamic batch and frame axes
            (y,) = session.run(None, {"mix": x[..., :frames].numpy()})
            with torch.inference_mode():
                reference = separator.target_models[target](x[..., :frames])
            assert y.shape == (2, 2, 2049, frames)
            # float32 rounding through three LSTM layers, relative to the largest magnitude
            # (1e-6 measured with the bundled umxsynth-rt; 2e-5 with its produced-stage weights)
            assert np.abs(y - reference.numpy()).max() < 5e-5 * reference.abs().max().item()


def test_streaming_graph_fed_block_by_block_equals_the_full_graph(mixture):
    model = load_separator("umxsynth-rt", targets=["drums"], niter=0).target_models["drums"]
    full = ort.InferenceSession(model_graph(model))
    stream = ort.InferenceSession(model_graph(model, streaming=True))
    x = magnitudes(mixture).numpy()  # 87 frames
    (expected,) = full.run(None, {"mix": x})
    h = c = np.zeros((3, 1, 128), np.float32)
    pieces, start = [], 0
    for size in (1, 5, 2, 13, 1, 40, 100):
        y, h, c = stream.run(None, {"mix": x[..., start : start + size], "h": h, "c": c})
        pieces.append(y)
        start += size
        if start >= x.shape[-1]:
            break
    streamed = np.concatenate(pieces, axis=-1)
    assert streamed.shape == expected.shape
    assert np.abs(streamed - expected).max() < 1e-5 * np.abs(expected).max()


def largest_relative_difference(stems, expected):
    """The largest absolute difference of a stem, relative to that stem's peak."""
    return ((stems - expected).abs().amax(dim=(0, 2, 3)) / expected.abs().amax(dim=(0, 2, 3))).max()


def test_onnxruntime_stems_equal_the_torch_backend(separators, mixture):
    """Without Wiener EM the stems agree to float32 rounding (3e-6 of a stem's peak measured);
    on this noisy mixture with the default EM iteration too (as docs/deploy.md says)."""
    for name in separators:
        for niter in (0, 1):
            separator = load_separator(name, niter=niter)
            onnx_sep = onnx_separator(separator)
            assert isinstance(onnx_sep.target_models["vocals"], OnnxModel)
            assert onnx_sep.targets == separator.targets
            expected = separator.separate(mixture[None], segment=None)
            stems = onnx_sep.separate(mixture[None], segment=None)
            assert stems.shape == expected.shape == (1, 4, 2, mixture.shape[-1])
            assert largest_relative_difference(stems, expected) < 1e-5, (name, niter)
            assert expected.abs().max() > 0.05


def test_wiener_em_magnifies_rounding_in_either_backend(separators):
    """A tone over faint noise: the EM iteration magnifies float32 rounding (docs/deploy.md), so
    the backends' stems differ by far more than the 1e-5 of a stem's peak without it, and by
    about as much as torch's own stems move when the input is scaled by 1 + 1e-6."""
    rng = np.random.default_rng(1)
    t = np.arange(44100) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal((2, t.size))
    tone = torch.from_numpy(tone.astype(np.float32))[None]
    separator = load_separator("umxsynth", niter=0)
    expected = separator.separate(tone, segment=None)
    stems = onnx_separator(separator).separate(tone, segment=None)
    assert largest_relative_difference(stems, expected) < 1e-5
    separator = separators["umxsynth"]  # niter 1
    onnx_sep = onnx_separator(separator)
    expected = separator.separate(tone, segment=None)
    moved = (separator.separate(tone * (1 + 1e-6), segment=None) - expected).abs().max()
    difference = (onnx_sep.separate(tone, segment=None) - expected).abs().max()
    assert difference < 4 * moved  # 3e-3 and 4e-3 measured


def test_onnxruntime_stream_equals_the_torch_stream(separators, mixture):
    separator = separators["umxsynth-rt"]
    expected = separate_causal(separator, mixture)
    stream = StreamingSeparator(onnx_separator(separator))
    pieces = [stream.process(mixture[:, s : s + 3000]) for s in range(0, mixture.shape[-1], 3000)]
    stems = torch.cat([*pieces, stream.flush()], dim=-1)
    assert stems.shape == expected.shape
    assert (stems - expected).abs().max() < 1e-4


def test_bidirectional_models_have_no_streaming_graph(separators, tmp_path):
    written = export_onnx(separators["umxsynth"], tmp_path / "bi")
    assert [p.name for p in written] == [f"{t}.onnx" for t in TARGETS] + [EXPORT_JSON]
    info = json.loads((tmp_path / "bi" / EXPORT_JSON).read_text())
    assert info["targets"]["drums"]["stream_graph"] is None
    model = onnx_separator(separators["umxsynth"]).target_models["bass"]
    with pytest.raises(UmxError, match="bidirectional"):
        model.stream(torch.zeros(1, 2, 2049, 3))
    with pytest.raises(UmxError, match="bidirectional"):
        model_graph(separators["umxsynth"].target_models["bass"], streaming=True)


def test_int8_quantises_the_lstm_and_linear_layers_and_stays_close(separators, mixture):
    separator = separators["umxsynth"]
    graph = onnx.load_from_string(quantize_graph(model_graph(separator.target_models["vocals"])))
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("DynamicQuantizeLSTM") == 3  # the LSTM's three layers
    assert ops.count("MatMulInteger") == 3  # fc1, fc2, fc3
    assert "MatMul" not in ops and "LSTM" not in ops

    expected = separator.separate(mixture[None], segment=None)
    stems = onnx_separator(separator, quantize="int8").separate(mixture[None], segment=None)
    error = (stems - expected).square().sum() / expected.square().sum()
    assert 0 < error < 10 ** (-25 / 10)  # changed, but by less than -25 dB of the stems


def test_cli_backends_and_their_refusals(tmp_path, mixture, capsys):
    song = tmp_path / "song.wav"
    sf.write(song, mixture.T.numpy(), 44100, subtype="FLOAT")
    stems = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        argv = ["separate", str(song), "--outdir", str(out), "--backend", backend, "-q"]
        argv += ["--model", "umxsynth", "--subtype", "FLOAT", "--clip", "none"]
        assert run_cli(argv, capsys)[0] == 0
        stems[backend] = np.stack([sf.read(out / "song" / f"{t}.wav")[0] for t in TARGETS])
    assert np.abs(stems["torch"] - stems["onnxruntime"]).max() < 1e-4

    for extra, message in [
        (["--backend", "torch", "--quantize", "int8"], "leave out --backend torch"),
        (
            ["--backend", "onnxruntime", "--device", "cuda"],
            "runs the models with onnxruntime on the CPU",
        ),
        (["--quantize", "int8", "--device", "cuda"], "--quantize int8 runs the models"),
    ]:
        code, _, err = run_cli(["separate", str(song), "--outdir", str(tmp_path), *extra], capsys)
        assert code == 1
        assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["separate", "batch"])
def test_the_backend_help_promises_the_bound_that_holds(command, capsys):
    """1e-5 of the peak with --niter 0 (test_onnxruntime_stems_equal_the_torch_backend); the
    Wiener EM can magnify the rounding past any fixed bound (docs/deploy.md), so no 1e-4."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    backend = text[text.index("--backend {torch,onnxruntime} what runs") :][:400]
    assert "stems within 1e-5 of their peak with --niter 0, further apart with the Wiener EM" in (
        backend
    )
    assert "1e-4" not in backend


def test_export_model_from_typed_options_writes_what_the_command_writes(tmp_path, capsys):
    """`export_model(ExportOptions(...))`, the library side of `umx export`, writes the same
    graphs as the command, byte for byte."""
    options = ExportOptions("umxsynth-rt", tmp_path / "lib", targets=["bass"])
    written = export_model(options, progress=False)
    assert [path.name for path in written] == ["bass.onnx", "bass.stream.onnx", EXPORT_JSON]
    assert main(["export", "umxsynth-rt", str(tmp_path / "cli"), "--targets", "bass", "-q"]) == 0
    for path in written:
        assert path.read_bytes() == (tmp_path / "cli" / path.name).read_bytes()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model": None}, "MODEL must be a model name or folder, not None"),
        ({"outdir": 3}, "OUTDIR must be a folder, not 3"),
        ({"quantize": "int4"}, "unknown quantisation 'int4'"),
        ({"targets": "vocals"}, "targets must be a list of names, not the text 'vocals'"),
        ({"targets": []}, "--targets is empty"),
        ({"force": "no"}, "--force must be True or False, not 'no'"),
    ],
)
def test_export_options_refuse_bad_values_before_any_model_loads(tmp_path, changes, expected):
    arguments = {"model": "umxsynth", "outdir": tmp_path / "out", **changes}
    with pytest.raises(UmxError, match="^" + re.escape(expected)):
        ExportOptions(**arguments)
    assert not (tmp_path / "out").exists()


def test_export_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "export"
    code, stdout, err = run_cli(["export", "umxsynth", str(out), "--targets", "bass", "-q"], capsys)
    assert (code, stdout, err) == (0, "", "")  # -q: quiet, no file list
    before = (out / "bass.onnx").read_bytes()
    argv = ["export", "umxsynth", str(out), "--targets", "bass", "--quantize", "int8", "-q"]
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "use --force" in err
    assert (out / "bass.onnx").read_bytes() == before
    assert run_cli([*argv, "--force"], capsys)[0] == 0
    assert len((out / "bass.onnx").read_bytes()) < len(before) / 2  # int8 weights
    assert json.loads((out / EXPORT_JSON).read_text())["quantize"] == "int8"
    assert sorted(p.name for p in out.iterdir()) == ["bass.onnx", EXPORT_JSON]  # no temp files
    code, stdout, err = run_cli([*argv[:-1], "--force"], capsys)  # without -q: says what it did
    assert code == 0 and stdout.splitlines() == [str(out / "bass.onnx"), str(out / EXPORT_JSON)]
    assert f"umx: umxsynth: 1 target exported to {out} (int8)" in err

    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(["export", "umxsynth", str(tmp_path / "file"), "-q"], capsys)
    assert code == 1 and "it is a file" in err
    argv = ["export", "umxsynth", str(tmp_path / "file" / "below"), "--targets", "bass", "-q"]
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "cannot create output directory" in err
    assert len(err.strip().splitlines()) == 1


def test_a_read_only_export_folder_is_refused_with_what_to_do(tmp_path, monkeypatch, capsys):
    """It said "cannot create output directory ro/e: Read-only file system"."""
    (tmp_path / "ro").mkdir()
    read_only_folder(monkeypatch, tmp_path / "ro")
    argv = ["export", "umxsynth", str(tmp_path / "ro" / "e"), "--targets", "bass", "-q"]
    code, _, err = run_cli(argv, capsys)
    assert (code, err) == (
        1,
        f"umx: error: cannot create output directory {tmp_path / 'ro' / 'e'}: Read-only file "
        "system; write elsewhere\n",
    )


def test_an_export_written_meanwhile_is_kept_without_force(tmp_path, monkeypatch):
    """Two exports into one folder: the one that ends last fails, without touching the other's
    files, as if they had been there when it started."""
    out = tmp_path / "export"
    other = {"bass.onnx": b"other graph", EXPORT_JSON: b"{}"}

    def other_export_ends(model, **options):
        out.mkdir(exist_ok=True)
        for name, data in other.items():
            (out / name).write_bytes(data)
        return model_graph(model, **options)

    monkeypatch.setattr(umx.onnx.export, "model_graph", other_export_ends)
    with pytest.raises(UmxError) as error:
        export_onnx(load_separator("umxsynth", targets=["bass"]), out)
    assert (
        str(error.value)
        == f"{out / 'bass.onnx'} already exists; use --force to overwrite the export"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == other


def test_a_stop_while_an_export_replaces_another_lands_once_it_is_whole(tmp_path, monkeypatch):
    """A Ctrl-C or SIGTERM between two of the renames left the folder with no JSON, one new
    graph and the others old (`separator.json is missing`, it then said)."""
    out = tmp_path / "export"
    export_onnx(load_separator("umxsynth", targets=["bass", "drums"]), out)
    before = {name: (out / name).read_bytes() for name in ("bass.onnx", "drums.onnx")}
    replace = os.replace

    def replace_then_stop(source, target):
        replace(source, target)
        os.kill(os.getpid(), signal.SIGINT)  # Python's handler: KeyboardInterrupt

    monkeypatch.setattr(umx.onnx.export.os, "replace", replace_then_stop)
    separator = load_separator("umxsynth", targets=["bass", "drums"])
    with pytest.raises(KeyboardInterrupt):
        export_onnx(separator, out, quantize="int8", force=True)
    assert sorted(p.name for p in out.iterdir()) == ["bass.onnx", "drums.onnx", EXPORT_JSON]
    assert json.loads((out / EXPORT_JSON).read_text())["quantize"] == "int8"
    assert all((out / name).read_bytes() != data for name, data in before.items())


def test_a_folder_of_graphs_without_its_json_says_to_export_again(tmp_path, capsys):
    """What a process killed outright during the renames leaves: it was called a model
    directory without its separator.json."""
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "vocals.onnx").write_bytes(b"graph")
    sf.write(tmp_path / "song.wav", np.zeros((44100, 2)), 44100)
    argv = ["separate", str(tmp_path / "song.wav"), "--model", str(tmp_path / "export")]
    assert run_cli(argv, capsys)[1:] == (
        "",
        f"umx: error: {tmp_path / 'export'} holds ONNX graphs but no {EXPORT_JSON}, as an "
        f"export cut short leaves it: export it again with `umx export MODEL {tmp_path}/export "
        "--force`\n",
    )
    # the command it gives runs as written: `umx export --force` lacked the model and folder
    (tmp_path / "my export").mkdir()
    (tmp_path / "my export" / "vocals.onnx").write_bytes(b"graph")
    argv[-1] = str(tmp_path / "my export")
    assert run_cli(argv, capsys)[2].endswith(
        f"export it again with `umx export MODEL '{tmp_path}/my export' --force`\n"
    )


def test_an_export_the_file_system_refuses_leaves_nothing(tmp_path, capsys):
    """A write refused (as on a full disk) is one line, and the folders made for the export
    are removed again."""
    out = tmp_path / "new" / "export"
    with file_size_limit(4096):
        code, _, err = run_cli(["export", "umxsynth", str(out), "--targets", "bass"], capsys)
    assert code == 1
    assert err.splitlines()[-1] == f"umx: error: cannot write the export into {out}: File too large"
    assert list(tmp_path.iterdir()) == []


def test_an_export_read_while_exported_again_says_so(tmp_path):
    """Between the old JSON's removal and the new one's rename (milliseconds), a reader was told
    that the export was damaged and to export it again."""
    export = tmp_path / "export"
    export.mkdir()
    json_file = export / EXPORT_JSON
    with written_aside({json_file: b"{}"}), pytest.raises(UmxError) as error:
        load_export(export)
    assert str(error.value) == (
        f"{export} is being exported again (umx export --force) right now: run this once it "
        "has ended"
    )
    with pytest.raises(UmxError, match="export the model again"):  # no export is being written
        load_export(export)


def test_missing_onnxruntime_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UmxError, match=r"pip install 'umx\[onnx\]'"):
        require_onnx()


def test_the_numpy_examples_of_the_deploy_guide_run_each_on_its_own(
    tmp_path, monkeypatch, mixture, capsys
):
    """Each Python block of the guide runs alone in a fresh namespace: the numpy + onnxruntime
    separation gives umx's --niter 0 stems, the streaming loop the full graph's magnitudes of
    the stream's frames (non-centred, after n_fft - n_hop zeros)."""
    commands = re.findall(r"^umx (export .*?)\s*(?:#.*)?$", DEPLOY, flags=re.MULTILINE)
    assert commands[0] == "export umxsynth umxsynth-onnx"
    code = re.findall(r"```python\n(.*?)```", DEPLOY, flags=re.DOTALL)
    assert len(code) == 2
    (tmp_path / "song").mkdir()
    monkeypatch.chdir(tmp_path / "song")
    sf.write("song.wav", mixture.T.numpy(), 44100, subtype="FLOAT")  # kept by the block
    before = Path("song.wav").read_bytes()
    namespace: dict = {}
    exec(compile(code[0], "deploy.md", "exec"), namespace)
    assert Path("song.wav").read_bytes() == before
    expected = load_separator("umxsynth", niter=0).separate(mixture[None], segment=None)[0]
    for k, target in enumerate(TARGETS):
        assert np.abs(namespace["stems"][target] - expected[k].numpy()).max() < 1e-4
        assert Path("numpy-stems", f"{target}.wav").exists()

    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")  # the block makes its export and test signal
    namespace = {}
    exec(compile(code[1], "deploy.md", "exec"), namespace)
    assert sorted(p.name for p in Path().iterdir()) == ["song.wav", "umxsynth-rt-onnx"]
    audio = torch.from_numpy(sf.read("song.wav", dtype="float32")[0].T)
    n_fft, n_hop = 4096, 1024
    padded = torch.nn.functional.pad(audio, (n_fft - n_hop, 0))
    spec = torch.stft(
        padded, n_fft, n_hop, window=torch.hann_window(n_fft), center=False, return_complex=True
    )
    frames = namespace["frames"]
    assert frames.shape == (1, 2, 2049, audio.shape[-1] // n_hop) == (1, *spec.shape)
    assert np.abs(frames[0] - spec.abs().numpy()).max() < 1e-3  # float32 FFTs of two libraries
    full = ort.InferenceSession("umxsynth-rt-onnx/vocals.onnx")
    (whole,) = full.run(None, {"mix": frames})
    assert np.abs(namespace["streamed"] - whole).max() < 1e-5 * np.abs(whole).max()


def test_the_backend_keeps_its_graphs_in_the_model_cache(separators, monkeypatch, mixture):
    separator = separators["umxsynth-rt"]
    first = onnx_separator(separator, quantize="int8")
    cached = sorted((cache_dir() / GRAPH_CACHE).glob("*.onnx"))
    assert len(cached) == 8  # four targets, full and streaming graphs
    assert all(onnx.load(path).graph.node for path in cached)
    for path in cached:  # each beside its SHA-256 record, in sha256sum's format
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert path.with_name(path.name + ".sha256").read_text() == f"{digest}  {path.name}\n"
    assert len(list((cache_dir() / GRAPH_CACHE).iterdir())) == 16

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(umx.onnx.runtime, "model_graph", no_export)
    again = onnx_separator(separator, quantize="int8")
    audio = mixture[None, :, :20000]
    assert torch.equal(first.separate(audio), again.separate(audio))
    with pytest.raises(AssertionError, match="exported again"):
        onnx_separator(separator)  # float32 graphs are other files


def test_the_cache_key_changes_with_the_code_that_builds_the_graphs(tmp_path, monkeypatch):
    """An upgrade of umx that changes `OpenUnmix` (or the exporter) exports the graphs again,
    where the weights and the torch and onnxruntime versions are the same: the cached graph
    built by the old code is not served."""
    model = OpenUnmix(257, 2, 16, max_bin=200).freeze()
    cache = umx.onnx.runtime.GraphCache()
    before = cache.path(model, streaming=False, quantize=None)
    cache.graph(model)
    assert before.exists()
    upgraded = tmp_path / "model.py"  # the new code: here, one comment more
    upgraded.write_bytes(Path(umx.model.__file__).read_bytes() + b"# changed\n")
    monkeypatch.setattr(umx.model, "__file__", str(upgraded))
    monkeypatch.setattr(umx.onnx.runtime, "code_digest", umx.onnx.runtime.code_digest.__wrapped__)
    exported = []
    monkeypatch.setattr(
        umx.onnx.runtime, "model_graph", lambda *a, **k: exported.append(a) or model_graph(*a, **k)
    )
    after = cache.path(model, streaming=False, quantize=None)
    assert after != before
    graph, data = cache.graph(model)
    assert len(exported) == 1 and graph.path == after and graph.read() == data
    monkeypatch.undo()  # the code as it was: its graph is served again, from the cache
    assert cache.path(model, streaming=False, quantize=None) == before


def test_graphs_unused_for_a_month_are_removed_when_another_is_cached(tmp_path, monkeypatch):
    """Keys change with umx's code and the torch and onnxruntime versions: without pruning,
    each upgrade would leave its graphs in the cache for good."""
    monkeypatch.setenv("UMX_CACHE", str(tmp_path / "cache"))
    cache = umx.onnx.runtime.GraphCache()
    old, used, new = (OpenUnmix(257, 2, 16, max_bin=200 + i).freeze() for i in range(3))
    stale, kept = (cache.graph(model)[0].path for model in (old, used))
    orphan = cache.folder / f"{'0' * 64}.onnx.sha256"  # a record whose graph was never written
    orphan.write_text("left by an interrupted write\n")
    foreign = cache.folder / "notes.txt"
    foreign.write_text("not the cache's")
    month_ago = time.time() - (umx.onnx.runtime.UNUSED_DAYS + 1) * 86400
    for path in cache.folder.iterdir():
        os.utime(path, (month_ago, month_ago))
    assert cache.graph(used)[0].path == kept  # used: marked so, not exported again
    assert cache.graph(old)[0].path == stale  # a graph read prunes nothing
    os.utime(stale, (month_ago, month_ago))
    added = cache.graph(new)[0].path
    names = {path.name for path in cache.folder.iterdir()}
    assert names == {
        name for path in (kept, added) for name in (path.name, f"{path.name}.sha256")
    } | {"notes.txt"}


def test_a_graph_the_disk_refuses_leaves_no_record_behind(tmp_path, monkeypatch, caplog):
    """A full disk left `<key>.onnx.sha256` records without their graphs."""
    monkeypatch.setenv("UMX_CACHE", str(tmp_path / "cache"))
    cache = umx.onnx.runtime.GraphCache()
    model = OpenUnmix(257, 2, 16, max_bin=200).freeze()
    with file_size_limit(4096):  # the record fits, the graph does not
        graph, data = cache.graph(model)
    assert graph == data and cache.unwritable
    assert "cannot write the ONNX graph cache" in caplog.text
    assert list(cache.folder.iterdir()) == []


def test_an_onnxruntime_separator_pickles_into_worker_processes(separators, monkeypatch, mixture):
    """`umx evaluate --jobs N` sends its separator to worker processes: the sessions are made
    anew there from the cached graph files, or from the graphs themselves without a cache."""
    import pickle

    audio = mixture[None, :, :20000]
    cached = onnx_separator(separators["umxsynth-rt"], quantize="int8")
    assert isinstance(cached.target_models["bass"].graphs[0], GraphFile)
    expected = cached.separate(audio)
    copy = pickle.loads(pickle.dumps(cached))
    assert copy.target_models["bass"].unidirectional
    assert torch.equal(copy.separate(audio), expected)

    monkeypatch.setattr(umx.onnx.runtime, "cache_dir", lambda: Path("/proc/no-cache-here"))
    uncached = onnx_separator(separators["umxsynth"])
    assert isinstance(uncached.target_models["bass"].graphs[0], bytes)
    expected = uncached.separate(audio)
    assert torch.equal(pickle.loads(pickle.dumps(uncached)).separate(audio), expected)


# --- the verified graph cache and export folders, on the small test models (16 kHz) -----------

RATE = 16000


@pytest.fixture(scope="module")
def small(tmp_path_factory, small_music_separator):
    """The small test model as a model directory and as an export folder, and a song."""
    root = tmp_path_factory.mktemp("small")
    save_separator(small_music_separator, root / "model")
    export_onnx(small_music_separator, root / "export")
    rng = np.random.default_rng(2)
    t = np.arange(RATE) / RATE
    song = 0.3 * np.sin(2 * np.pi * np.array([[220.0], [330.0]]) * t) + 0.05 * rng.standard_normal(
        (2, t.size)
    )
    sf.write(root / "song.wav", song.T, RATE, subtype="FLOAT")
    return root


def test_the_residual_takes_no_name_of_the_models_targets(small):
    """Not even one that is not selected: its stem would be the mixture less the others."""
    message = (
        "--residual drums is already a target of the model: name the rest of the mix otherwise"
    )
    with pytest.raises(UmxError, match=message):
        load_export(small / "export", targets=["vocals"], residual="drums")
    with pytest.raises(UmxError, match=message):
        load_separator("umxsynth", targets=["vocals"], residual="drums")
    separator = load_separator("umxsynth", targets=["vocals"], residual="rest")
    assert onnx_separator(separator).model_targets == list(TARGETS)


def separate_cli(capsys, song, model, out, *extra):
    """`umx separate` into `out` with float stems; returns (exit code, stderr, stems
    `(nb_targets, nb_timesteps, nb_channels)` in the order of `extra`'s targets or all)."""
    argv = ["separate", str(song), "--model", str(model), "--outdir", str(out), "-q"]
    code, _, err = run_cli([*argv, "--subtype", "FLOAT", "--clip", "none", *extra], capsys)
    files = sorted((out / "song").glob("*.wav")) if code == 0 else []
    stems = {path.stem: sf.read(path, dtype="float32")[0] for path in files}
    return code, err, stems


def graph_files():
    return sorted((cache_dir() / GRAPH_CACHE).glob("*.onnx"))


def replace_by_file(path):
    shutil.rmtree(path)
    path.write_text("a file")


# (id, what blocks the filled cache, the warnings: a fragment of each line)
def read_only(monkeypatch):
    """A cache on a read-only disk or without write permission (tests run as root, whom
    permissions do not stop): writing a graph fails as it would there."""
    for path in graph_files():
        path.unlink()

    def refuse(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(umx.onnx.runtime, "write_recorded", refuse)


UNWRITABLE = [
    ("cache-is-a-file", lambda _: replace_by_file(cache_dir()), ["cannot write the ONNX"]),
    (
        "graph-folder-is-a-file",
        lambda _: replace_by_file(cache_dir() / GRAPH_CACHE),
        ["cannot write the ONNX"],
    ),
    (
        "graph-is-a-folder",  # where a graph should be: it cannot be replaced
        lambda _: [path.unlink() or path.mkdir() for path in graph_files()[:1]],
        ["Is a directory): rebuilt it", "cannot write the ONNX graph cache"],
    ),
    ("read-only", read_only, ["(Permission denied): the graphs stay in memory"]),
]


@pytest.mark.parametrize(
    ("block", "warnings"), [c[1:] for c in UNWRITABLE], ids=[c[0] for c in UNWRITABLE]
)
def test_an_unwritable_cache_runs_in_memory_with_one_warning(
    small, tmp_path, capsys, monkeypatch, block, warnings
):
    song, model = small / "song.wav", small / "model"
    code, _, expected = separate_cli(capsys, song, model, tmp_path / "t")
    args = ("--backend", "onnxruntime")
    assert separate_cli(capsys, song, model, tmp_path / "a", *args)[0] == 0  # fills the cache
    block(monkeypatch)
    code, err, stems = separate_cli(capsys, song, model, tmp_path / "o", *args)
    assert code == 0
    lines = err.splitlines()
    assert len(lines) == len(warnings), err
    assert all(fragment in line for fragment, line in zip(warnings, lines, strict=True)), err
    for target, stem in expected.items():
        assert np.abs(stems[target] - stem).max() < 1e-4


def test_an_export_folder_runs_as_the_model(small, tmp_path, capsys, small_music_separator):
    """`--model EXPORT_DIR` runs the folder's own graphs (onnxruntime implied): the torch
    backend's stems within 1e-4, nothing exported into the cache; --targets picks graphs;
    --quantize int8 quantises a float32 export in memory."""
    song, out = small / "song.wav", tmp_path
    code, _, expected = separate_cli(capsys, song, small / "model", out / "torch")
    code, err, stems = separate_cli(capsys, song, small / "export", out / "export")
    assert code == 0 and err == ""
    assert sorted(stems) == sorted(expected)
    for target, stem in expected.items():
        assert np.abs(stems[target] - stem).max() < 1e-4
    assert not (cache_dir() / GRAPH_CACHE).exists()

    extra = ("--targets", "bass", "vocals", "--niter", "0")
    code, _, expected = separate_cli(capsys, song, small / "model", out / "t2", *extra)
    code, _, stems = separate_cli(capsys, song, small / "export", out / "e2", *extra)
    assert code == 0 and sorted(stems) == ["bass", "vocals"]
    for target, stem in expected.items():
        assert np.abs(stems[target] - stem).max() < 1e-4

    code, _, stems = separate_cli(
        capsys, song, small / "export", out / "int8", "--quantize", "int8"
    )
    audio = torch.from_numpy(sf.read(song, dtype="float32")[0].T)[None]
    int8 = onnx_separator(small_music_separator, quantize="int8").separate(audio)[0]
    assert code == 0
    for k, target in enumerate(small_music_separator.targets):
        assert np.abs(stems[target] - int8[k].numpy().T).max() < 1e-4


def test_an_export_folder_is_named_as_given(small, tmp_path, monkeypatch, capsys):
    """`--model ./umxsynth-rt`, an export folder named as a bundled model: the log names the
    folder, not the bundled model (it said "separated with umxsynth-rt")."""
    shutil.copytree(small / "export", tmp_path / "umxsynth-rt")
    monkeypatch.chdir(tmp_path)
    argv = ["separate", str(small / "song.wav"), "--model", "./umxsynth-rt", "--outdir", "out"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0 and err.splitlines()[-1].endswith(": separated with ./umxsynth-rt"), err
    assert load_export("./umxsynth-rt").model_name == "./umxsynth-rt"


def test_quantize_int8_implies_the_onnxruntime_backend(
    small, tmp_path, capsys, small_music_separator
):
    song = small / "song.wav"
    code, err, stems = separate_cli(capsys, song, small / "model", tmp_path, "--quantize", "int8")
    assert code == 0 and err == ""
    audio = torch.from_numpy(sf.read(song, dtype="float32")[0].T)[None]
    int8 = onnx_separator(small_music_separator, quantize="int8").separate(audio)[0]
    torch_stems = small_music_separator.separate(audio)[0]
    for k, target in enumerate(small_music_separator.targets):
        assert np.abs(stems[target] - int8[k].numpy().T).max() < 1e-4
    assert (
        max(np.abs(stems[t] - torch_stems[k].numpy().T).max() for k, t in enumerate(TARGETS)) > 1e-4
    )


def test_umx_stream_runs_a_causal_export_folder(tmp_path, capsys):
    torch.manual_seed(0)
    models = {t: OpenUnmix(257, 2, 16, unidirectional=True, max_bin=200).freeze() for t in TARGETS}
    for model in models.values():
        with torch.no_grad():
            model.output_mean.uniform_(0.2, 0.8)
    separator = Separator(models, sample_rate=RATE, n_fft=512, n_hop=128, nb_channels=2)
    save_separator(separator, tmp_path / "model")
    export_onnx(separator, tmp_path / "export")
    rng = np.random.default_rng(3)
    sf.write(tmp_path / "song.wav", 0.2 * rng.standard_normal((RATE, 2)), RATE, subtype="FLOAT")
    stems = {}
    for model in ("model", "export"):
        argv = ["stream", str(tmp_path / "song.wav"), "--model", str(tmp_path / model), "-q"]
        argv += ["--outdir", str(tmp_path / f"out-{model}"), "--subtype", "FLOAT", "--clip", "none"]
        assert run_cli(argv, capsys)[0] == 0
        stems[model] = [
            sf.read(tmp_path / f"out-{model}" / "song" / f"{t}.wav")[0] for t in TARGETS
        ]
    for torch_stem, export_stem in zip(stems["model"], stems["export"], strict=True):
        assert np.abs(torch_stem - export_stem).max() < 1e-4
        assert np.abs(torch_stem).max() > 0.01


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="musdb needs ffprobe")
def test_umx_evaluate_runs_an_export_folder(small, tmp_path, capsys):
    rng = np.random.default_rng(4)
    track = tmp_path / "root" / "test" / "A - B"
    track.mkdir(parents=True)
    sources = {t: 0.1 * rng.standard_normal((RATE, 2)) for t in TARGETS}
    for name, audio in sources.items():
        sf.write(track / f"{name}.wav", audio, RATE, subtype="FLOAT")
    sf.write(track / "mixture.wav", sum(sources.values()), RATE, subtype="FLOAT")
    stems = {}
    for model in ("model", "export"):
        argv = ["evaluate", "--root", str(tmp_path / "root"), "--is-wav", "-q"]
        argv += ["--model", str(small / model), "--outdir", str(tmp_path / f"stems-{model}")]
        argv += ["--evaldir", str(tmp_path / f"eval-{model}")]
        assert run_cli(argv, capsys)[0] == 0
        folder = tmp_path / f"stems-{model}" / "test" / "A - B"
        stems[model] = {t: sf.read(folder / f"{t}.wav")[0] for t in TARGETS}
    for target in TARGETS:
        assert np.abs(stems["model"][target] - stems["export"][target]).max() < 1e-4


def test_a_model_directory_that_also_holds_an_export_stays_a_model_directory(
    small, tmp_path, capsys, small_music_separator
):
    """`umx export DIR DIR` beside the weights: DIR still runs on torch by default."""
    shutil.copytree(small / "model", tmp_path / "model")
    export_onnx(small_music_separator, tmp_path / "model")
    song = small / "song.wav"
    code, _, expected = separate_cli(capsys, song, small / "model", tmp_path / "a")
    for extra in ((), ("--backend", "torch")):
        code, err, stems = separate_cli(capsys, song, tmp_path / "model", tmp_path / "b", *extra)
        assert code == 0 and err == ""
        assert all(np.array_equal(stems[t], expected[t]) for t in expected)
        shutil.rmtree(tmp_path / "b")
    assert not (cache_dir() / GRAPH_CACHE).exists()  # no export to the cache: torch ran


def test_batch_runs_an_export_folder_as_separate_does(
    small, tmp_path, capsys, small_music_separator
):
    """`umx batch --model EXPORT_DIR` (as its --backend help says): the stems of `umx separate`,
    the job's identity the export's graphs, so another export in its place is refused."""
    export, song = tmp_path / "export", small / "song.wav"
    shutil.copytree(small / "export", export)
    argv = ["batch", str(song), "--outdir", str(tmp_path / "out"), "--model", str(export), "-q"]
    argv += ["--subtype", "FLOAT", "--clip", "none"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0 and err == ""
    _, _, stems = separate_cli(capsys, song, export, tmp_path / "separate")
    for target, stem in stems.items():
        written = sf.read(tmp_path / "out" / "song" / f"{target}.wav", dtype="float32")[0]
        np.testing.assert_array_equal(written, stem)
    (record,) = read_records(tmp_path / "out" / ".umx-job" / "manifest.jsonl")
    assert record["status"] == "done" and record["model"] == str(export)
    assert record["model_sha256"] == export_sha256(export, TARGETS)
    assert export_sha256(export, TARGETS) != export_sha256(export, TARGETS[:1])

    other = Separator(
        {t: OpenUnmix(257, 2, 16, max_bin=200).freeze() for t in TARGETS},
        sample_rate=16000,
        n_fft=512,
        n_hop=128,
    )
    export_onnx(other, export, force=True)
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "the model's weights changed (SHA-256" in err
