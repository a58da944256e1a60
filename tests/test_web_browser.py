"""`umx serve` end to end in Debian's headless Chromium, driven by Playwright: upload a generated
song, wait for the separation, play the stems, mute and solo, download the zip, reload, delete,
and upload a file that is not audio. A screenshot of each step is saved under
`$UMX_WEB_SCREENSHOTS` (default: the test's tmp_path)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
RATE, SECONDS = 44100, 2.0
TARGETS = ["vocals", "drums", "bass", "other"]
TIMEOUT_MS = 90_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")


def write_song(path: Path) -> None:
    """Two seconds of a stereo song: a sung-like vibrato tone, a bass, a chord and hi-hats."""
    t = np.arange(int(SECONDS * RATE)) / RATE
    rng = np.random.default_rng(0)
    voice = 0.2 * np.sin(2 * np.pi * 440 * t + 3 * np.sin(2 * np.pi * 5 * t))
    bass = 0.25 * np.sin(2 * np.pi * 55 * t)
    chord = sum(0.07 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    hats = 0.15 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 8 * t) > 0.95)
    song = np.stack([voice + bass + chord + hats, 0.8 * voice + bass + chord - hats], axis=1)
    soundfile.write(path, song.astype(np.float32), RATE, subtype="PCM_16")


@pytest.fixture
def server(tmp_path):
    """`umx serve` on a free port, in its own process, with the bundled umxsynth (offline)."""
    command = [sys.executable, "-m", "umx.cli", "serve", "--port", "0"]
    command += ["--data-dir", str(tmp_path / "data")]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"umx serve: (http://127\.0\.0\.1:\d+/)\n", line)
        assert match, f"{line!r} {process.stderr.read() if process.poll() is not None else ''}"
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(30)
    assert "Traceback" not in process.stderr.read()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_separate_listen_remix_download_in_chromium(server, browser, tmp_path):
    shots = Path(os.environ.get("UMX_WEB_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    song = tmp_path / "my song.wav"
    write_song(song)
    page = browser.new_page(viewport={"width": 1000, "height": 820}, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("dialog", lambda dialog: dialog.accept())

    def shot(name: str) -> None:
        page.screenshot(path=shots / f"{name}.png", full_page=True)

    page.goto(server)
    page.wait_for_selector("#model option[value=umxsynth]", state="attached")
    assert page.input_value("#model") == "umxsynth"
    shot("1-empty")

    # upload: the queue shows the song, the progress ends, the player opens with its stems
    page.set_input_files("#files", str(song))
    page.wait_for_selector("#jobs li:has-text('my song.wav')")
    shot("2-queued")
    page.wait_for_selector("#jobs li.state-done:has-text('my song.wav')")
    page.wait_for_selector("#player[data-state=ready]")
    rows = page.locator(".stem")
    assert rows.evaluate_all("rows => rows.map(row => row.dataset.stem)") == TARGETS
    durations = rows.evaluate_all("rows => rows.map(row => Number(row.dataset.duration))")
    assert durations == pytest.approx([SECONDS] * 4, abs=1e-4)
    drawn = page.evaluate(
        """() => [...document.querySelectorAll('.stem canvas')].map(canvas => {
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
            return data.data.filter((value, index) => index % 4 === 3 && value > 0).length;
        })"""
    )
    assert all(count > 100 for count in drawn)  # a waveform is drawn on each canvas

    # play: the position moves; pause: it stops
    page.click("#play")
    # a function, not an expression: the page's content security policy forbids eval
    page.wait_for_function("() => Number(document.querySelector('#seek').value) > 0.3")
    page.click("#play")
    stopped = page.input_value("#seek")
    page.wait_for_timeout(300)
    assert page.input_value("#seek") == stopped
    assert page.text_content("#play") == "Play"

    # mute the vocals, then solo the drums, then unsolo
    def gains() -> dict[str, float]:
        return dict(rows.evaluate_all("rows => rows.map(r => [r.dataset.stem, +r.dataset.gain])"))

    page.click(".stem[data-stem=vocals] button.muted")
    assert gains() == {"vocals": 0, "drums": 1, "bass": 1, "other": 1}
    shot("3-vocals-muted")
    page.click(".stem[data-stem=drums] button.solo")
    assert gains() == {"vocals": 0, "drums": 1, "bass": 0, "other": 0}
    page.click(".stem[data-stem=drums] button.solo")
    page.fill(".stem[data-stem=bass] input[type=range]", "0.5")
    assert gains() == {"vocals": 0, "drums": 1, "bass": 0.5, "other": 1}

    # download every stem as a zip of flac files, and one stem
    page.select_option("#format", "flac")
    with page.expect_download() as download:
        page.click("#zip")
    archive = tmp_path / download.value.suggested_filename
    download.value.save_as(archive)
    assert archive.name == "my_song-stems-flac.zip"
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == sorted(f"my_song/{t}.flac" for t in TARGETS)
        for name in opened.namelist():
            info = soundfile.info(io.BytesIO(opened.read(name)))
            assert (info.frames, info.samplerate, info.channels) == (SECONDS * RATE, RATE, 2)
    with page.expect_download() as download:
        page.click(".stem[data-stem=bass] a.download")
    assert download.value.suggested_filename == "my_song-bass.flac"

    # reload: the finished song is still there, and its player opens again
    page.reload()
    page.wait_for_selector("#jobs li.state-done:has-text('my song.wav')")
    page.wait_for_selector("#player[data-state=ready]")
    shot("4-reloaded")

    # a file that is not audio, whatever its name, is refused in plain words
    notes = tmp_path / "notes.mp3"
    notes.write_text("these are not the droids you are looking for\n" * 50)
    page.set_input_files("#files", str(notes))
    error = page.wait_for_selector("#jobs li.upload .error")
    assert error.text_content().startswith("notes.mp3 is not decodable audio")
    shot("5-not-audio")

    # delete the song: it leaves the list and the player closes
    page.click("#jobs li.state-done button.delete")
    page.wait_for_selector("#jobs li.state-done", state="detached")
    assert page.is_hidden("#player")
    page.reload()
    page.wait_for_selector("#empty", state="visible")
    assert errors == []
    assert len(list(shots.glob("*.png"))) == 5
