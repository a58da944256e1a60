"""Hostile input to the onnxruntime backend, as a table: damaged export folders, hostile
umx-onnx.json files, options that do not go together, and damaged graph caches.

Refusals: every case exits with its code and one line, without a traceback, and every file of
the case folder (the song, the model, the exports) is byte-identical afterwards with no file
added. Repairs (a damaged cache): the run succeeds with one line per damaged graph, the cache
holds the right graphs again, each verified, and the stems are torch's within 1e-4.
"""

import hashlib
import json
import math
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from umx.cli import main
from umx.errors import UmxError
from umx.model import OpenUnmix
from umx.modeldir import MAX_JSON_BYTES, save_separator
from umx.onnx.export import export_onnx, model_graph
from umx.onnx.graphs import recorded_graph
from umx.onnx.runtime import GRAPH_CACHE, OnnxModel
from umx.zoo import cache_dir

RATE = 16000
SONG = "song.wav"


def snapshot(root):
    """Every file under root, with the hash of its bytes."""
    return {
        path.relative_to(root): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def edit_json(change):
    """A change of an export's umx-onnx.json, as a function of the folder."""

    def edit(folder):
        path = folder / "umx-onnx.json"
        info = json.loads(path.read_text())
        change(info)
        path.write_text(json.dumps(info))

    return edit


def vocals(change):
    return edit_json(lambda info: change(info["targets"]["vocals"]))


def sha256_of(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def swap(a, b):
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)


def link_outside(folder):
    (folder / "vocals.onnx").unlink()
    (folder / "vocals.onnx").symlink_to(os.path.join("..", SONG))


def replace_graph(make):
    """Put other bytes, `make()`, in vocals.onnx and record their SHA-256 in the JSON, as a
    hostile export would: the hash matches, the graph must still be refused."""

    def replace(folder):
        data = make()
        (folder / "vocals.onnx").write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        vocals(lambda t: t.update(graph_sha256=digest))(folder)

    return replace


def fifo(folder):
    (folder / "vocals.onnx").unlink()
    os.mkfifo(folder / "vocals.onnx")


# damaged copies of the export folder, each as `export-<name>`
DAMAGED_EXPORTS = {
    "flipped-byte": lambda f: flip_byte(f / "vocals.onnx"),
    "swapped": lambda f: swap(f / "vocals.onnx", f / "drums.onnx"),
    "truncated": lambda f: (f / "bass.onnx").write_bytes((f / "bass.onnx").read_bytes()[:999]),
    "empty": lambda f: (f / "other.onnx").write_bytes(b""),
    "missing-graph": lambda f: (f / "other.onnx").unlink(),
    "graph-is-a-pipe": fifo,
    "graph-garbage-rehashed": replace_graph(lambda: b"\x08\x07" + bytes(range(256)) * 40),
    "graph-of-a-mono-model": replace_graph(lambda: model_graph(OpenUnmix(257, 1, 16, max_bin=200))),
    "graph-links-outside": link_outside,
    "json-not-json": lambda f: (f / "umx-onnx.json").write_text("{not json"),
    "json-deep": lambda f: (f / "umx-onnx.json").write_text("[" * 100_000 + "]" * 100_000),
    "json-huge": lambda f: (f / "umx-onnx.json").write_text(" " * (MAX_JSON_BYTES + 1) + "{}"),
    "json-list": lambda f: (f / "umx-onnx.json").write_text("[]"),
    "format": edit_json(lambda i: i.update(format="other")),
    "version": edit_json(lambda i: i.update(version=3)),
    "version-1": edit_json(lambda i: i.update(version=1)),  # before the graphs recorded settings
    "rate-nan": edit_json(lambda i: i.update(sample_rate=math.nan)),
    "rate-huge": edit_json(lambda i: i.update(sample_rate=1e300)),
    "rate-negative": edit_json(lambda i: i.update(sample_rate=-16000)),
    "channels-three": edit_json(lambda i: i.update(nb_channels=3)),
    "channels-text": edit_json(lambda i: i.update(nb_channels="2")),
    "channels-lie": edit_json(lambda i: i.update(nb_channels=1)),
    "hop-negative": edit_json(lambda i: i["stft"].update(n_hop=-128)),
    "hop-as-window": edit_json(lambda i: i["stft"].update(n_hop=512)),
    "quantize-unknown": edit_json(lambda i: i.update(quantize="int4")),
    "targets-list": edit_json(lambda i: i.update(targets=["vocals"])),
    "targets-none": edit_json(lambda i: i.update(targets={})),
    "target-escaping": edit_json(lambda i: i["targets"].update({"../x": i["targets"]["bass"]})),
    "graph-parent": vocals(lambda t: t.update(graph=os.path.join("..", SONG))),
    "graph-absolute": vocals(lambda t: t.update(graph="/etc/passwd")),
    "no-hash": vocals(lambda t: t.pop("graph_sha256")),
    "hash-not-hex": vocals(lambda t: t.update(graph_sha256="z" * 64)),
    "bins-wrong": vocals(lambda t: t.update(nb_bins=2049)),
    "bins-float": vocals(lambda t: t.update(nb_bins=257.0)),
    "hidden-negative": vocals(lambda t: t.update(hidden_size=-16)),
    "layers-huge": vocals(lambda t: t.update(nb_layers=10**12)),
    "causal-without-stream-graph": vocals(lambda t: t.update(unidirectional=True)),
    # settings that the graphs' shapes cannot contradict: their metadata does
    "rate-lie": edit_json(lambda i: i.update(sample_rate=22050)),
    "hop-lie": edit_json(lambda i: i["stft"].update(n_hop=256)),
    "quantize-lie": edit_json(lambda i: i.update(quantize="int8")),
    "targets-swapped": edit_json(
        lambda i: i["targets"].update(vocals=i["targets"]["drums"], drums=i["targets"]["vocals"])
    ),
    "graph-of-another-target": lambda f: vocals(
        lambda t: t.update(graph="drums.onnx", graph_sha256=sha256_of(f / "drums.onnx"))
    )(f),
    "graph-without-metadata": replace_graph(
        lambda: model_graph(OpenUnmix(257, 2, 16, max_bin=200))  # the sizes of the JSON
    ),
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, small_music_separator):
    """A song, the small test model, its export, damaged copies of the export, and a file."""
    root = tmp_path_factory.mktemp("onnx-hostile")
    rng = np.random.default_rng(0)
    sf.write(root / SONG, 0.3 * rng.standard_normal((RATE, 2)), RATE, subtype="FLOAT")
    save_separator(small_music_separator, root / "model")
    export_onnx(small_music_separator, root / "export")
    for name, damage in DAMAGED_EXPORTS.items():
        shutil.copytree(root / "export", root / f"export-{name}")
        damage(root / f"export-{name}")
    (root / "afile").write_text("not a folder")
    return root


def damaged(name, *extra):
    return [SONG, "--model", f"export-{name}", *extra]


DAMAGED = "is damaged; export the model again (umx export"
# (id, arguments, exit code, message fragment); exit code 2: argparse's usage error
CASES = [
    ("export-flipped-byte", damaged("flipped-byte"), 1, "vocals.onnx does not match its recorded"),
    ("export-swapped", damaged("swapped"), 1, DAMAGED),
    ("export-truncated", damaged("truncated"), 1, "bass.onnx does not match"),
    ("export-empty", damaged("empty"), 1, "other.onnx does not match"),
    ("export-missing-graph", damaged("missing-graph"), 1, "cannot read export-missing-graph"),
    ("export-graph-is-a-pipe", damaged("graph-is-a-pipe"), 1, "vocals.onnx is not a regular"),
    ("export-graph-garbage", damaged("graph-garbage-rehashed"), 1, "onnxruntime cannot load"),
    ("export-graph-garbage-int8", damaged("graph-garbage-rehashed", "--quantize", "int8"), 1,
     "onnxruntime cannot load"),  # not given to the quantiser, which raised ValueError
    ("export-graph-of-a-mono-model", damaged("graph-of-a-mono-model"), 1, "does not have the"),
    ("export-graph-links-outside", damaged("graph-links-outside"), 1,
     "export-graph-links-outside/vocals.onnx points outside the export folder "
     "export-graph-links-outside (umx runs only the graphs in it); export the model again"),
    ("json-not-json", damaged("json-not-json"), 1, "is not valid JSON"),
    ("json-deep", damaged("json-deep"), 1, "nested too deeply"),
    ("json-huge", damaged("json-huge"), 1, "is too large"),
    ("json-list", damaged("json-list"), 1, "does not describe an umx export"),
    ("json-format", damaged("format"), 1, "does not describe an umx export"),
    ("json-version", damaged("version"), 1, "is version 3 of the export format"),
    ("json-version-1", damaged("version-1"), 1,
     "umx-onnx.json is version 1 of the export format, this umx reads version 2; export the "
     "model again"),
    ("json-rate-nan", damaged("rate-nan"), 1, "sample_rate must be a finite number"),
    ("json-rate-huge", damaged("rate-huge"), 1, "sample_rate must be at most"),
    ("json-rate-negative", damaged("rate-negative"), 1, "sample_rate must be at least"),
    ("json-channels-three", damaged("channels-three"), 1, "nb_channels must be at most 2"),
    ("json-channels-text", damaged("channels-text"), 1, "nb_channels must be a whole number"),
    ("json-channels-lie", damaged("channels-lie"), 1, "does not have the inputs and outputs"),
    ("json-hop-negative", damaged("hop-negative"), 1, "stft n_hop must be at least 1"),
    ("json-hop-as-window", damaged("hop-as-window"), 1, "cannot be inverted"),
    ("json-quantize-unknown", damaged("quantize-unknown"), 1, "unknown quantize 'int4'"),
    ("json-targets-list", damaged("targets-list"), 1, "has no targets"),
    ("json-targets-none", damaged("targets-none"), 1, "has no targets"),
    ("json-target-escaping", damaged("target-escaping"), 1, "unsafe target name '../x'"),
    ("json-graph-parent", damaged("graph-parent"), 1, "must be the name of a file in the"),
    ("json-graph-absolute", damaged("graph-absolute"), 1, "must be the name of a file in the"),
    ("json-no-hash", damaged("no-hash"), 1, "records no SHA-256 of vocals.onnx"),
    ("json-hash-not-hex", damaged("hash-not-hex"), 1, "records no SHA-256 of vocals.onnx"),
    ("json-bins-wrong", damaged("bins-wrong"), 1, "nb_bins 2049: it must be the whole number"),
    ("json-bins-float", damaged("bins-float"), 1, "nb_bins 257.0: it must"),
    ("json-hidden-negative", damaged("hidden-negative"), 1, "hidden_size must be at least 1"),
    ("json-layers-huge", damaged("layers-huge"), 1, "nb_layers must be at most 65536"),
    ("json-causal-no-stream", damaged("causal-without-stream-graph"), 1, "if and only if"),
    ("json-rate-lie", damaged("rate-lie"), 1,
     "export-rate-lie/umx-onnx.json does not match export-rate-lie/vocals.onnx: sample_rate "
     "'22050.0' in the JSON, '16000.0' in the graph; export the model again (umx export MODEL "
     "export-rate-lie --force)"),
    ("json-hop-lie", damaged("hop-lie"), 1, "n_hop '256' in the JSON, '128' in the graph"),
    ("json-quantize-lie", damaged("quantize-lie"), 1, "quantize 'int8' in the JSON, 'null' in"),
    ("json-targets-swapped", damaged("targets-swapped"), 1,
     "target 'vocals' in the JSON, 'drums' in the graph"),
    ("json-graph-of-another-target", damaged("graph-of-another-target"), 1,
     "target 'vocals' in the JSON, 'drums' in the graph"),
    ("export-graph-without-metadata", damaged("graph-without-metadata"), 1,
     "vocals.onnx records none of the settings it was exported with (its umx.* metadata); "
     "export the model again"),
    ("export-unknown-target", [SONG, "--model", "export", "--targets", "guitar"], 1, "no target"),
    ("export-with-torch", [SONG, "--model", "export", "--backend", "torch"], 1, "leave out"),
    ("export-on-cuda", [SONG, "--model", "export", "--device", "cuda"], 1, "--model export runs"),
    ("export-stream-bidirectional", ["stream", SONG, "--model", "./export"], 1,
     "the 'vocals' model of the export ./export has a bidirectional LSTM, which needs the whole "
     "future of the signal and cannot separate a stream: give the export of a causal model (umx "
     "export umxsynth-rt DIR, or of a model trained with `umx train --unidirectional`)"),
    ("quantize-with-torch", [SONG, "--model", "model", "--quantize", "int8", "--backend", "torch"],
     1, "--quantize int8 runs on onnxruntime: leave out --backend torch"),
    ("quantize-on-cuda", [SONG, "--model", "model", "--quantize", "int8", "--device", "cuda"], 1,
     "--quantize int8 runs the models with onnxruntime on the CPU"),
    ("quantize-int4", [SONG, "--model", "model", "--quantize", "int4"], 2, "choice: 'int4'"),
    ("quantize-empty", [SONG, "--model", "model", "--quantize", ""], 2, "invalid choice: ''"),
    ("export-over-an-export", ["export", "model", "export"], 1, "already exists; use --force"),
    ("export-into-a-file", ["export", "model", "afile"], 1, "afile: it is a file"),
    ("export-below-a-file", ["export", "model", "afile/below"], 1,
     "cannot create output directory afile/below: afile is a file; move it away, or write "
     "elsewhere"),
    ("export-cmd-unknown-target", ["export", "model", "x", "--targets", "guitar"], 1, "no target"),
    ("export-cmd-of-an-export", ["export", "export", "x"], 1, "export is an ONNX export (umx "
     "export), which only umx separate, stream, batch, evaluate and serve run: give the PyTorch"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "status", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_onnx_refusals_say_one_line_and_change_nothing(
    workspace, arguments, status, message, capsys, monkeypatch
):
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    try:
        code = main([*arguments, "-q"])
    except SystemExit as error:  # argparse: usage, then the error line
        code = error.code
    err = capsys.readouterr().err
    assert code == status, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert message in lines[-1], err
    if status == 1:
        assert len(lines) == 1 and lines[0].startswith("umx: error: "), err
    folder = arguments[arguments.index("--model") + 1] if "--model" in arguments else ""
    if folder.startswith("export-"):  # a damaged export: every refusal says what to do
        assert lines[0].endswith(f"; export the model again (umx export MODEL {folder} --force)")
    assert snapshot(workspace) == before
    assert not (cache_dir() / GRAPH_CACHE).exists()  # nothing exported into the cache


def test_other_bidirectional_graphs_are_refused_as_the_torch_model_is(small_music_separator):
    """Those of the backend, not of an export folder (they said "use a causal (unidirectional)
    model", naming none)."""
    model = small_music_separator.target_models["vocals"]
    with pytest.raises(UmxError) as torch_refusal:
        model.require_causal("the 'vocals' model")
    sizes = {"nb_channels": 2, "nb_bins": 257, "hidden_size": 16, "nb_layers": 3}
    graphs = OnnxModel(model_graph(model), None, **sizes)
    with pytest.raises(UmxError) as refusal:
        graphs.require_causal("the 'vocals' model")
    assert str(refusal.value) == str(torch_refusal.value)
    assert "use a causal model (such as umxsynth-rt)" in str(refusal.value)


def test_the_table_covers_the_issue():
    assert len(CASES) >= 40
    assert len({case[0] for case in CASES}) == len(CASES)


# --- damaged caches: repaired, not refused --------------------------------------------------


def record(path):
    return path.with_name(path.name + ".sha256")


# (id, what is done to the sorted cached graphs `g`, how many of them are damaged)
CACHE_DAMAGE = [
    ("flipped-byte", lambda g: flip_byte(g[0]), 1),
    ("truncated", lambda g: g[0].write_bytes(g[0].read_bytes()[:1000]), 1),
    ("empty", lambda g: g[0].write_bytes(b""), 1),
    ("swapped", lambda g: swap(g[0], g[1]), 2),
    ("swapped-with-records", lambda g: [swap(g[0], g[1]), swap(record(g[0]), record(g[1]))], 2),
    ("record-missing", lambda g: record(g[0]).unlink(), 1),
    ("record-garbage", lambda g: record(g[0]).write_text("not a hash\n"), 1),
    ("record-of-another", lambda g: record(g[0]).write_bytes(record(g[1]).read_bytes()), 1),
    ("record-empty", lambda g: record(g[0]).write_bytes(b""), 1),
    ("graph-is-a-pipe", lambda g: [g[0].unlink(), os.mkfifo(g[0])], 1),
]


@pytest.mark.parametrize(
    ("damage", "nb_damaged"), [c[1:] for c in CACHE_DAMAGE], ids=[c[0] for c in CACHE_DAMAGE]
)
def test_a_damaged_cached_graph_is_rebuilt_never_run(
    workspace, tmp_path, monkeypatch, capsys, damage, nb_damaged
):
    """One line per damaged graph names it and says it was rebuilt; afterwards the case folder
    holds what it held before the damage, and the stems are torch's within 1e-4."""
    case = tmp_path / "case"
    case.mkdir()
    shutil.copy(workspace / SONG, case / SONG)
    shutil.copytree(workspace / "model", case / "model")
    monkeypatch.setenv("UMX_CACHE", str(case / "cache"))
    monkeypatch.chdir(case)
    common = ["-q", SONG, "--model", "model", "--subtype", "FLOAT", "--clip", "none"]
    assert main([*common, "--outdir", str(tmp_path / "torch")]) == 0
    onnx = [*common, "--backend", "onnxruntime"]
    assert main([*onnx, "--outdir", str(tmp_path / "first")]) == 0
    assert capsys.readouterr().err == ""
    good = snapshot(case)
    graphs = sorted((case / "cache" / GRAPH_CACHE).glob("*.onnx"))
    assert len(graphs) == 4
    damage(graphs)

    assert main([*onnx, "--outdir", str(tmp_path / "again")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == nb_damaged, lines
    assert all(line.startswith("umx: ") and line.endswith(": rebuilt it") for line in lines)
    assert all(any(path.name in line for path in graphs) for line in lines), lines
    assert snapshot(case) == good
    assert all(recorded_graph(path).read() for path in graphs)
    for target in ("vocals", "drums", "bass", "other"):
        expected = sf.read(tmp_path / "torch" / "song" / f"{target}.wav")[0]
        stem = sf.read(tmp_path / "again" / "song" / f"{target}.wav")[0]
        assert np.abs(stem - expected).max() < 1e-4
        assert np.abs(expected).max() > 0.01
