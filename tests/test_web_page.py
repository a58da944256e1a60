"""The routes of `umx serve` behind the page's features, on a real server on 127.0.0.1: the mix
of chosen stems at their gains (and its refusals), the original mix, one target and the rest,
queue positions, Retry, the models' availability and the favicon."""

from __future__ import annotations

import http.server
import io
import socket
import threading

import numpy as np
import pytest
import soundfile

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import umx.web.server
from test_web import MODEL, RATE, local_client, new_app, new_store, post, song_bytes, wait
from umx import api
from umx.cli import main
from umx.jobs import DONE, FAILED, QUEUED
from umx.web.records import ORIGINAL, error_summary


def read(data: bytes) -> np.ndarray:
    audio, _ = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A started store and a client of its app, with one finished 4-stem job of a loud song."""
    store = new_store(tmp_path_factory.mktemp("serve"))
    store.start(1)
    try:
        with local_client(new_app(store)) as client:
            data = song_bytes(1.0, seed=5)
            job = wait(store, post(client, data, stems="all").json()["id"])
            assert job["state"] == DONE
            yield store, client, job, data
    finally:
        store.stop()


def test_the_mix_is_the_sum_of_the_chosen_stems_at_their_gains(served):
    _, client, job, data = served
    base = f"/api/jobs/{job['id']}"
    stems = {t: read(client.get(f"{base}/stems/{t}.wav").content) for t in job["targets"]}
    original = client.get(f"{base}/{ORIGINAL}.wav")
    assert original.status_code == 200
    np.testing.assert_array_equal(read(original.content), read(data))  # decoded as uploaded

    gains = {"vocals": 0.25, "bass": 1.5, ORIGINAL: 0.5}
    response = client.get(f"{base}/mix/wav", params=gains)
    assert response.status_code == 200 and "X-Umx-Notice" not in response.headers
    assert 'filename="song-mix.wav"' in response.headers["content-disposition"]
    expected = 0.25 * stems["vocals"] + 1.5 * stems["bass"] + 0.5 * read(data)
    np.testing.assert_allclose(read(response.content), expected, atol=1e-6)
    flac = client.get(f"{base}/mix/flac", params=gains)
    np.testing.assert_allclose(read(flac.content), expected, atol=1 / 32768)

    # louder than full scale: rescaled to fit, as `umx song.mp3` does, and said so
    loud = {t: 2 for t in job["targets"]}
    response = client.get(f"{base}/mix/wav", params=loud)
    summed = 2 * sum(stems.values())
    peak = np.abs(summed).max()
    assert peak > 1
    notice = response.headers["X-Umx-Notice"]
    assert notice.startswith(f"the mix peaked at {peak:.2f}, above full scale, so it was rescaled")
    mix = read(response.content)
    assert np.abs(mix).max() <= 1
    np.testing.assert_allclose(mix, summed * (np.abs(mix).max() / peak), atol=1e-6)


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ({"piano": "1"}, 422, "unknown stem 'piano' in the mix; the stems are vocals, drums, "),
        ({"vocals": "nan"}, 422, "the gain of vocals must be a finite number, not nan"),
        ({"vocals": "-1"}, 422, "the gain of vocals must be at least 0, not -1"),
        ({"vocals": "2.5"}, 422, "the gain of vocals must be at most 2, not 2.5"),
        ({"vocals": "2.0000001"}, 422, "the gain of vocals must be at most 2, not 2.0000001"),
        ({"vocals": "1e-320"}, 422, "the mix is silent at these gains: raise the gain of a"),
        ({"vocals": "1e-40"}, 422, "the mix is silent at these gains"),  # a denormal mix
        ({"vocals": "loud"}, 422, "the gain of vocals must be a number, not 'loud'"),
        ({"vocals": "0", "bass": "0"}, 422, "the mix is silent: give a stem a gain above 0"),
        ({}, 422, "the mix is silent"),
    ],
)
def test_a_mix_asked_for_wrongly_is_refused_in_one_line(served, query, status, message):
    _, client, job, _ = served
    response = client.get(f"/api/jobs/{job['id']}/mix/wav", params=query)
    assert response.status_code == status
    assert response.json()["error"].startswith(message)
    assert "\n" not in response.json()["error"]


def test_no_mix_of_an_unknown_job_or_format(served):
    _, client, job, _ = served
    assert client.get(f"/api/jobs/{job['id']}/mix/ogg", params={"vocals": 1}).status_code == 404
    assert client.get(f"/api/jobs/{'0' * 32}/mix/wav", params={"vocals": 1}).status_code == 404
    assert client.get(f"/api/jobs/{'0' * 32}/{ORIGINAL}.wav").status_code == 404


def test_one_target_and_the_rest_as_the_api_separates_them(served):
    store, client, _, data = served
    job = wait(store, post(client, data, stems="drums").json()["id"])
    assert job["state"] == DONE and job["targets"] == ["drums", "no_drums"]
    audio = read(data)
    expected = api.separate(audio.T, RATE, MODEL, targets=["drums"], residual="no_drums")
    for target in job["targets"]:
        stem = read(client.get(f"/api/jobs/{job['id']}/stems/{target}.wav").content)
        assert np.abs(stem).max() > 0.01
        np.testing.assert_allclose(stem.T, expected[target].numpy(), atol=2e-5)


def test_queue_positions_follow_the_queue(tmp_path):
    store = new_store(tmp_path / "data")  # not started: every upload waits
    changes = []
    store.subscribe(changes.append)
    with local_client(new_app(store)) as client:
        ids = [post(client, song_bytes(0.2, seed)).json()["id"] for seed in range(3)]
        assert [store.job(i)["position"] for i in ids] == [1, 2, 3]
        assert store.job(ids[0])["state"] == QUEUED
        changes.clear()
        assert client.delete(f"/api/jobs/{ids[0]}").status_code == 204
        assert [store.job(i)["position"] for i in ids[1:]] == [1, 2]
        assert {c["id"]: c.get("position") for c in changes} == {ids[0]: None, ids[1]: 1, ids[2]: 2}
        store.start(1)
        try:
            assert wait(store, ids[2])["position"] is None
        finally:
            store.stop()


def test_retry_queues_a_failed_job_again(served):
    store, client, _, _ = served
    failed = post(client, song_bytes(0.3, seed=9), name="offline.wav", model="umxl").json()
    job = wait(store, failed["id"])
    assert job["state"] == FAILED
    assert job["error_summary"] == (
        "offline mode is on and model umxl is not in the cache: run UMX_OFFLINE=0 umx download "
        "umxl, then Retry"
    )
    again = client.post(f"/api/jobs/{job['id']}/retry")
    assert again.status_code == 200 and again.json()["state"] == QUEUED
    assert again.json()["error"] is None
    retried = wait(store, job["id"])
    assert retried["state"] == FAILED and retried["finished"] > job["finished"]
    done = client.get("/api/jobs").json()[-1]
    assert done["state"] == DONE
    refused = client.post(f"/api/jobs/{done['id']}/retry")
    assert refused.status_code == 422
    assert refused.json()["error"] == "song.wav has not failed (it is done): nothing to retry"
    assert client.post(f"/api/jobs/{'0' * 32}/retry").status_code == 404
    foreign = client.post(f"/api/jobs/{job['id']}/retry", headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403


def test_models_say_whether_they_can_be_had_now(served, monkeypatch):
    _, client, _, _ = served
    models = {m["name"]: m for m in client.get("/api/config").json()["models"]}
    assert models["umxsynth"]["available"] and models["umxsynth"]["status"] == "bundled"
    assert models["umxsynth"]["notice"].startswith("umxsynth is a small demo model")
    assert list(models["umxsynth"]["stems"]) == ["all", "vocals", "drums", "bass", "other"]
    assert models["umxsynth"]["stems"]["vocals"] == "vocals and accompaniment"
    assert models["umxsynth"]["stems"]["drums"] == "drums and the rest"  # not "no_drums"
    assert models["umxsynth"]["stems"]["all"] == "vocals, drums, bass, other"
    umxl = models["umxl"]
    assert not umxl["available"] and umxl["get"] == "umx download umxl"
    assert umxl["reason"] == "not in the cache, and offline mode is on (UMX_OFFLINE)"
    monkeypatch.setenv("UMX_OFFLINE", "0")  # online: umxl downloads when first used
    models = {m["name"]: m for m in client.get("/api/config").json()["models"]}
    assert models["umxl"]["available"] and models["umxl"]["reason"] is None


@pytest.mark.parametrize(
    ("route", "ranges", "status", "message"),
    [
        (
            "stems/vocals.wav",
            "bytes=abc",
            400,
            "the Range header 'bytes=abc' cannot be served "
            "(range must be requested); ask for bytes=START-END or leave it out",
        ),
        (
            "mixture.wav",
            "bytes=5-2",
            400,
            "the Range header 'bytes=5-2' cannot be served "
            "(start must be less than end); ask for bytes=START-END or leave it out",
        ),
        ("zip/wav", "items=0-1", 400, "(only support bytes range)"),
        ("stems/drums.wav", "bytes=999999999-", 416, "asks for no byte of the file ("),
        ("stems/drums.wav", "bytes=-0", 416, "'bytes=-0' asks for no byte of the file ("),
    ],
)
def test_a_range_that_cannot_be_served_is_a_json_error(served, route, ranges, status, message):
    _, client, job, _ = served
    url = f"/api/jobs/{job['id']}/{route}"
    response = client.get(url, headers={"Range": ranges})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert message in response.json()["error"]
    if status == 416:
        size = len(client.get(url).content)
        assert response.headers["content-range"] == f"bytes */{size}"
        assert f"({size} bytes)" in response.json()["error"]
    part = client.get(url, headers={"Range": "bytes=4-11"})  # a good range is still served
    assert part.status_code == 206 and part.content == client.get(url).content[4:12]


def test_favicon(served):
    _, client, _, _ = served
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert icon.text.startswith("<svg")


@pytest.mark.parametrize(
    ("message", "summary"),
    [
        (
            "offline mode is on and model umxl is not in the cache: save https://x as /y",
            "offline mode is on and model umxl is not in the cache: run UMX_OFFLINE=0 umx "
            "download umxl, then Retry",
        ),
        (
            "notes.mp3 is not decodable audio (libsndfile: unknown format)",
            "notes.mp3 is not decodable audio",
        ),
        (  # a colon too early to end the summary
            "song.wav: the excerpt needs a finite start >= 0 (got nan)",
            "song.wav: the excerpt needs a finite start >= 0",
        ),
        ("short: one", "short: one"),
        ("x" * 300, "x" * 159 + "…"),
    ],
)
def test_error_summary_is_the_first_clause(message, summary):
    assert error_summary(message) == summary


class Stop(Exception):
    """Ends `umx serve` once its app's arguments are known."""


@pytest.mark.parametrize("model", [None, "umxsynth"])
def test_models_are_unavailable_when_the_download_server_does_not_answer(
    tmp_path, monkeypatch, model
):
    """With or without --model, the download host is asked once at start (here a local port
    that refuses, or a local server that answers: no network)."""
    seen = []

    def create_app(store, **options):
        seen.append(options["no_downloads"])
        raise Stop

    monkeypatch.setattr(umx.web.server, "create_app", create_app)
    monkeypatch.setenv("UMX_OFFLINE", "0")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refusing = f"http://127.0.0.1:{closed.getsockname()[1]}/files"
    answering = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), http.server.BaseHTTPRequestHandler
    )
    threading.Thread(target=answering.serve_forever, daemon=True).start()
    chosen = [] if model is None else ["--model", model]
    try:
        for url in (refusing, f"http://127.0.0.1:{answering.server_port}/files"):
            monkeypatch.setenv("UMX_ZOO_URL", url)
            with pytest.raises(Stop):
                main(["serve", "--data-dir", str(tmp_path / "data"), "--port", "0", *chosen])
    finally:
        answering.shutdown()
        answering.server_close()
    assert seen == ["the download server did not answer at start", None]
