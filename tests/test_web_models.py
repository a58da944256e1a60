"""`umx serve` with a model folder: a job is the song with the weights the folder held when it was
uploaded. A folder retrained (or replaced) makes new jobs, separated with its new weights, also
after a restart and in a server that loaded the old ones; a job queued before the change fails
in one line rather than run with other weights; another folder of the same name (another working
directory) is another job; and an export folder (`umx export`) offers its targets one by one.
Small 16 kHz models on a real server on 127.0.0.1."""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import umx.jobs
import umx.model_hash
from test_web import local_client, new_app, new_store, post, song_bytes, wait
from umx import api
from umx.cli import main
from umx.jobs import DONE, FAILED
from umx.model import OpenUnmix
from umx.modeldir import save_separator
from umx.separator import Separator
from umx.web.records import stem_modes

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

RATE = 16000
TARGETS = ("vocals", "drums", "bass", "other")


def train(directory: Path, seed: int, targets=TARGETS) -> Path:
    """Write a small model into `directory` (replacing the one there), as `umx train --output
    DIRECTORY --force` does; its weights differ with `seed`."""
    torch.manual_seed(seed)
    models = {}
    for target in targets:
        model = OpenUnmix(257, 2, 16, max_bin=200)
        with torch.no_grad():
            model.output_mean.uniform_(0.2, 0.8)
        models[target] = model.freeze()
    separator = Separator(models, sample_rate=RATE, n_fft=512, n_hop=128, nb_channels=2)
    save_separator(separator, directory, force=True)
    # a retrain takes minutes: its files never keep the times of the last ones, as these could
    # on a file system whose clock ticks coarsely
    for path in directory.iterdir():
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9 * seed))
    return directory


@functools.cache
def song(seed: int) -> bytes:
    """A song of a second, the same bytes each time (a float wav's PEAK chunk holds the time
    it was written)."""
    return song_bytes(1.0, seed, rate=RATE)


def stems(client, job: dict) -> dict[str, np.ndarray]:
    """A finished job's stems, downloaded, `(nb_channels, nb_timesteps)`."""
    found = {}
    for target in job["targets"]:
        response = client.get(f"/api/jobs/{job['id']}/stems/{target}.wav")
        assert response.status_code == 200
        found[target] = soundfile.read(io.BytesIO(response.content), dtype="float32")[0].T
    return found


def separated(data: bytes, model: Path, **options) -> dict[str, np.ndarray]:
    """What `umx.api.separate` makes of a song with the model now in `model`."""
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return {
        name: s.numpy() for name, s in api.separate(audio.T, rate, str(model), **options).items()
    }


def assert_stems(client, job: dict, expected: dict[str, np.ndarray]) -> None:
    assert job["state"] == DONE, job
    served = stems(client, job)
    assert list(served) == list(expected)
    for name, stem in served.items():
        np.testing.assert_allclose(stem, expected[name], atol=2e-5)


@pytest.fixture
def loads(monkeypatch):
    """The models loaded from here on, as the options' model names them (an empty cache)."""
    loaded = []
    real = umx.jobs.separator_for

    def counted(options, progress):
        loaded.append(str(options.model))
        return real(options, progress=progress)

    monkeypatch.setattr(umx.jobs, "_separators", type(umx.jobs._separators)())
    monkeypatch.setattr(umx.jobs, "separator_for", counted)
    return loaded


@pytest.fixture
def hashes(monkeypatch):
    """The weights hashed from here on (`umx.model_hash.job_sha256`), counted."""
    counted = []
    real = umx.model_hash.job_sha256

    def job_sha256(separator, separation):
        counted.append(str(separation.model))
        return real(separator, separation)

    monkeypatch.setattr(umx.model_hash, "job_sha256", job_sha256)
    return counted


def test_a_retrained_folder_makes_new_jobs_with_its_new_weights(tmp_path, loads, hashes):
    model = train(tmp_path / "models" / "custom", seed=1)
    data = tmp_path / "data"
    store = new_store(data, models=[str(model)])
    store.start(1)
    try:
        with local_client(new_app(store)) as client:
            first = post(client, song(1), model=str(model), stems="all")
            assert first.status_code == 201
            assert_stems(client, wait(store, first.json()["id"]), separated(song(1), model))
            # more songs, and the same again: loaded and hashed once, not at each request
            assert post(client, song(1), model=str(model)).json()["id"] == first.json()["id"]
            wait(store, post(client, song(2), model=str(model)).json()["id"])
            assert len(loads) == 1 and len(hashes) == 1

            train(model, seed=2)  # while the server runs, after it loaded the first weights
            again = post(client, song(1), model=str(model), stems="all")
            assert again.status_code == 201 and again.json()["id"] != first.json()["id"]
            assert_stems(client, wait(store, again.json()["id"]), separated(song(1), model))
            new = post(client, song(3), model=str(model), stems="all")
            assert_stems(client, wait(store, new.json()["id"]), separated(song(3), model))
            assert len(loads) == 2 and len(hashes) == 2
    finally:
        store.stop()

    train(model, seed=3)  # while the server is stopped
    store = new_store(data, models=[str(model)])
    store.start(1)
    try:
        with local_client(new_app(store)) as client:
            after = post(client, song(1), model=str(model), stems="all")
            assert after.status_code == 201
            assert after.json()["id"] not in (first.json()["id"], again.json()["id"])
            assert_stems(client, wait(store, after.json()["id"]), separated(song(1), model))
            # the folder unchanged since: the job of its weights, not separated twice
            repeat = post(client, song(1), model=str(model), stems="all")
            assert repeat.status_code == 200 and repeat.json()["id"] == after.json()["id"]
    finally:
        store.stop()


def test_a_job_queued_before_its_folder_changed_fails_in_one_line(tmp_path):
    model = train(tmp_path / "custom", seed=1)
    store = new_store(tmp_path / "data", models=[str(model)])
    try:
        with local_client(new_app(store)) as client:  # no worker yet: the song waits
            queued = post(client, song(1), model=str(model), name="song.wav", stems="vocals")
            assert queued.status_code == 201
            train(model, seed=2)
            store.start(1)
            job = wait(store, queued.json()["id"])
            assert job["state"] == FAILED and job["targets"] == []
            assert job["error"] == (
                f"the model {model} changed (retrained or replaced) since song.wav was "
                "uploaded; upload it again to separate it with the new weights"
            )
            assert not (store.jobs_dir / job["id"] / "stems").exists()
            # uploaded again: a new job, with the new weights
            again = post(client, song(1), model=str(model), name="song.wav", stems="vocals")
            assert again.status_code == 201 and again.json()["id"] != job["id"]
            expected = separated(song(1), model, targets=["vocals"], residual="accompaniment")
            assert_stems(client, wait(store, again.json()["id"]), expected)
    finally:
        store.stop()


def test_another_folder_of_the_same_name_is_another_job(tmp_path, monkeypatch):
    data = tmp_path / "data"
    ids = []
    for user, targets in (("a", TARGETS), ("b", ("vocals", "bass"))):
        train(tmp_path / user / "models" / "custom", seed=len(ids) + 1, targets=targets)
        monkeypatch.chdir(tmp_path / user)
        store = new_store(data, models=["models/custom"])
        store.start(1)
        try:
            with local_client(new_app(store)) as client:
                response = post(client, song(1), model="models/custom", stems="all")
                assert response.status_code == 201
                job = wait(store, response.json()["id"])
                assert job["targets"] == list(targets)
                assert_stems(client, job, separated(song(1), Path("models/custom")))
                ids.append(job["id"])
        finally:
            store.stop()
    assert ids[0] != ids[1]


def test_an_export_folder_offers_one_target_and_the_rest(tmp_path):
    pytest.importorskip("onnxruntime")
    model = train(tmp_path / "custom", seed=1)
    export = tmp_path / "export"
    assert main(["export", str(model), str(export), "-q"]) == 0
    store = new_store(tmp_path / "data", models=[str(model), str(export)])
    store.start(1)
    try:
        with local_client(new_app(store)) as client:
            config = {m["name"]: m for m in client.get("/api/config").json()["models"]}
            assert config[str(export)]["stems"] == stem_modes(TARGETS)
            assert config[str(export)]["stems"] == config[str(model)]["stems"]
            response = post(client, song(1), model=str(export), stems="drums")
            assert response.status_code == 201
            job = wait(store, response.json()["id"])
            assert job["state"] == DONE and job["targets"] == ["drums", "no_drums"]
            expected = separated(song(1), model, targets=["drums"], residual="no_drums")
            for name, stem in stems(client, job).items():  # onnxruntime: float32 rounding
                np.testing.assert_allclose(stem, expected[name], atol=1e-4)
    finally:
        store.stop()


def test_a_folder_that_cannot_be_loaded_refuses_the_upload_in_one_line(tmp_path):
    model = train(tmp_path / "custom", seed=1)
    store = new_store(tmp_path / "data", models=[str(model)])
    store.start(1)
    try:
        with local_client(new_app(store)) as client:
            (model / "vocals.pth").write_bytes(b"not weights")  # a retrain cut short
            response = post(client, song(1), model=str(model), stems="all")
            assert response.status_code == 422
            error = response.json()["error"]
            assert f"{model}/vocals.pth" in error and "\n" not in error and len(error) < 300
            assert store.jobs() == [] and list(store.jobs_dir.iterdir()) == []
            train(model, seed=2)  # mended: the same song is taken
            assert post(client, song(1), model=str(model), stems="all").status_code == 201
    finally:
        store.stop()


def test_a_bundled_models_new_weights_make_new_jobs(tmp_path, monkeypatch):
    """The data folder outlives an upgrade of umx, whose bundled weights may change: a song
    uploaded again is separated by the new weights, not answered with the old stems."""
    import umx.zoo.registry as registry
    from umx.zoo import MODELS, ZooEntry

    pretrained = tmp_path / "pretrained"
    monkeypatch.setattr(registry, "PRETRAINED_DIR", pretrained)
    entry = ZooEntry(
        name="umxsynth",
        description="a small stand-in",
        license="MIT",
        weights={target: f"{target}.pth" for target in TARGETS},
        sample_rate=RATE,
        n_fft=512,
        n_hop=128,
        nb_channels=2,
    )
    monkeypatch.setitem(MODELS, "umxsynth", entry)
    ids = []
    for seed in (1, 2):  # umx as installed, then upgraded
        train(pretrained / "umxsynth", seed=seed)
        monkeypatch.setattr(umx.jobs, "_separators", type(umx.jobs._separators)())  # restarted
        store = new_store(tmp_path / "data", models=["umxsynth"])
        store.start(1)
        try:
            with local_client(new_app(store)) as client:
                response = post(client, song(1), model="umxsynth", stems="all")
                assert response.status_code == 201  # a new job, not the stored one
                job = wait(store, response.json()["id"])
                assert_stems(client, job, separated(song(1), pretrained / "umxsynth"))
                ids.append(job["id"])
        finally:
            store.stop()
    assert ids[0] != ids[1]
