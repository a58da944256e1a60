"""The page of `umx serve` in Debian's headless Chromium, driven by Playwright, at a desktop's
size (1280x900) and a phone's (390x844): a keyboard-only session (choose a song, play, mute,
solo, set a volume, download the mix heard and the zip, with no mouse event), the focus kept
across live progress updates, no horizontal scrolling on a phone (nor at 320 px with the text
at up to 200 %), the axe-core accessibility engine on the empty page, during a job and with the
player open, the offline model list, a failed job's error, details and Retry, and the refusal
of a file that is not audio.

One server (in this process, on 127.0.0.1) serves the whole module, with 1-second chunks so that
a short song sends many progress updates. The screenshots of the player at both sizes are
taken into the test's temporary folder, or into the folder `$UMX_SCREENSHOTS` names
(`UMX_SCREENSHOTS=docs/images` refreshes those of docs/web.md and the README). axe-core comes
from npm, as a test-only dependency: `npm install --no-save --prefix .testdeps axe-core@4`
(.ci/run does it).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

from test_web import Held, new_app, new_store, serving, wait  # noqa: E402
from umx.web.records import ORIGINAL  # noqa: E402
from umx.zoo import MODELS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
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
AXE = ROOT / ".testdeps" / "node_modules" / "axe-core" / "axe.min.js"
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}
SMALL_PHONE = (320, 700)  # the narrowest phones, where larger text is most often needed
SCREENSHOTS = {"desktop": "web.png", "phone": "web-phone.png"}
RATE = 44100
TARGETS = ["vocals", "drums", "bass", "other"]
TIMEOUT_MS = 90_000
MOUSE_EVENTS = ["mousedown", "mouseup", "mousemove", "pointerdown", "pointerup", "wheel"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")


def write_song(path: Path, seconds: float, seed: int) -> None:
    """A stereo song: a sung-like vibrato tone, a bass, a chord and hi-hats."""
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    pitch = rng.uniform(330, 500)
    voice = 0.2 * np.sin(2 * np.pi * pitch * t + 3 * np.sin(2 * np.pi * 5 * t))
    bass = 0.25 * np.sin(2 * np.pi * rng.uniform(45, 70) * t)
    chord = sum(0.07 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    hats = 0.15 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 8 * t) > 0.95)
    song = np.stack([voice + bass + chord + hats, 0.8 * voice + bass + chord - hats], axis=1)
    soundfile.write(path, song.astype(np.float32), RATE, subtype="PCM_16")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The store and the page's address: every named model, umxsynth first; 1-s chunks."""
    store = new_store(
        tmp_path_factory.mktemp("serve"), models=list(MODELS), segment=1.0, overlap=0.25
    )
    store.start(1)
    try:
        with serving(new_app(store)) as url:
            yield store, url + "/"
    finally:
        store.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page_at(browser):
    """A page at one of `SIZES` (or at a width and height) that records mouse events, script
    errors and failed requests."""
    contexts = []

    def open_page(size: str | tuple[int, int]):
        width, height = SIZES[size] if isinstance(size, str) else size
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.problems = []
        page.on("pageerror", lambda error: page.problems.append(f"script error: {error}"))
        page.on(
            "console",
            lambda message: message.type == "error" and page.problems.append(message.text),
        )
        page.on("dialog", lambda dialog: dialog.accept())
        page.add_init_script(
            f"window.mouseEvents = []; for (const name of {MOUSE_EVENTS}) "
            "addEventListener(name, (e) => window.mouseEvents.push(e.type), true);"
        )
        return page

    yield open_page
    for context in contexts:
        context.close()


def axe_violations(page) -> list[str]:
    """The serious and critical violations axe-core finds on the page as it is."""
    if not AXE.exists():
        pytest.skip(f"needs axe-core: npm install --no-save --prefix .testdeps axe-core@4 ({AXE})")
    if not page.evaluate("'axe' in window"):
        page.evaluate(AXE.read_text())  # evaluated, not a <script>: the page's CSP still holds
    results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']}: {[n['target'] for n in v['nodes']]}"
        for v in results["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def focused(page) -> str:
    """The focused element as `tag#id.class[aria-label]`."""
    return page.evaluate(
        """() => { const e = document.activeElement;
            return `${e.tagName.toLowerCase()}#${e.id}.${e.className}` +
                `[${e.getAttribute('aria-label') || ''}]`; }"""
    )


def outline(page) -> list[str]:
    """The focused element's outline: its style and width (the page's is 3 px, solid)."""
    return page.evaluate(
        "() => { const style = getComputedStyle(document.activeElement);"
        "    return [style.outlineStyle, style.outlineWidth]; }"
    )


def description(page, selector: str, what: str = "description") -> str | None:
    """The accessible description (or `what="name"`, its name) of the element matching
    `selector`, as Chromium computes them (the description is said after the name and role)."""
    cdp = page.context.new_cdp_session(page)
    root = cdp.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    tree = cdp.send("Accessibility.getPartialAXTree", {"nodeId": node, "fetchRelatives": False})
    cdp.detach()
    return tree["nodes"][0].get(what, {}).get("value")


def said(page) -> str:
    """The live region's text once what waits to be said is said (what comes together is said
    as one, a moment later)."""
    page.wait_for_function("() => unsaid.size === 0")
    return page.text_content("#announcer")


def tab_to(page, selector: str, limit: int = 80) -> None:
    """Press Tab until the element matching `selector` has the focus."""
    for _ in range(limit):
        if page.evaluate("(s) => document.activeElement.matches(s)", selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}; the focus is on {focused(page)}")


def gains(page) -> dict[str, float]:
    return dict(
        page.locator(".track").evaluate_all(
            "rows => rows.map(r => [r.dataset.stem, Number(r.dataset.gain)])"
        )
    )


def read(data: bytes) -> np.ndarray:
    audio, _ = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio


@pytest.mark.parametrize("size", list(SIZES))
def test_keyboard_only_session(served, page_at, tmp_path, size):
    store, url = served
    page = page_at(size)
    song = tmp_path / f"a song for the {size}.wav"
    write_song(song, 2.0, seed=len(size))
    # the chooser's handler is set first: set at the key press, it could come too late
    page.on("filechooser", lambda chooser: chooser.set_files(str(song)))
    page.goto(url)
    page.wait_for_selector("html[data-state=ready]")
    assert page.input_value("#model") == "umxsynth"
    # a demonstration model says so, its command as code, not in backticks
    assert page.locator("#model-note code").all_text_contents() == ["umx download umxl"]
    assert "`" not in page.text_content("#model-note")
    assert axe_violations(page) == []

    # choose the song with the keyboard: the button opens the file chooser
    tab_to(page, "#choose")
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#jobs li.state-done:has-text('{song.name}')")
    assert said(page).startswith(f"{song.name}: done in ")
    page.wait_for_selector("#player[data-state=ready]")
    assert page.locator(".stem").evaluate_all("rows => rows.map(r => r.dataset.stem)") == TARGETS
    assert page.text_content("#demo").startswith("A demonstration model separated this song")
    assert page.locator("#demo code").all_text_contents() == ["umx download umxl"]
    assert "`" not in page.text_content("#demo")
    assert page.is_visible("#demo")
    assert page.is_hidden(f"#jobs li:has-text('{song.name}') button.retry")  # only when failed
    drawn = page.evaluate(
        """() => [...document.querySelectorAll('.track canvas')].map(canvas => {
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
            return data.data.filter((value, index) => index % 4 === 3 && value > 0).length;
        })"""
    )
    assert len(drawn) == 5 and all(count > 100 for count in drawn)  # 4 stems and the original

    # play with Enter on Play; pause with the space bar on the position slider
    tab_to(page, "#play")
    page.keyboard.press("Enter")
    # a function, not an expression: the page's content security policy forbids eval
    page.wait_for_function("() => Number(document.querySelector('#seek').value) > 0.3")
    tab_to(page, "#seek")
    page.keyboard.press(" ")
    assert page.text_content("#play") == "Play"
    page.keyboard.press("Home")
    assert float(page.input_value("#seek")) == 0
    page.keyboard.press("ArrowRight")  # 5 s, beyond this 2-s song: its end
    assert float(page.input_value("#seek")) == pytest.approx(2.0, abs=0.01)
    assert page.get_attribute("#seek", "aria-valuetext") == "0:02 of 0:02"

    # mute the vocals, solo the drums and the bass, the bass at half its volume
    tab_to(page, "[aria-label='Mute vocals']")
    page.keyboard.press("Enter")
    assert page.get_attribute("[aria-label='Mute vocals']", "aria-pressed") == "true"
    tab_to(page, "[aria-label='Solo drums']")
    page.keyboard.press(" ")
    tab_to(page, "[aria-label='Volume of bass']")
    for _ in range(10):
        page.keyboard.press("ArrowLeft")  # 0.05 each
    assert page.get_attribute("[aria-label='Volume of bass']", "aria-valuetext") == "50 %"
    tab_to(page, "[aria-label='Solo bass']")
    page.keyboard.press("Enter")
    heard = {"vocals": 0, "drums": 1, "bass": 0.5, "other": 0, ORIGINAL: 0}
    assert gains(page) == heard
    assert axe_violations(page) == []
    assert page.evaluate("document.documentElement.scrollWidth") <= SIZES[size][0]
    images = Path(os.environ.get("UMX_SCREENSHOTS") or tmp_path)
    images.mkdir(parents=True, exist_ok=True)
    if size == "desktop":
        page.screenshot(path=images / SCREENSHOTS[size], full_page=True)
    else:  # the player from its title down
        page.evaluate("document.querySelector('#player').scrollIntoView()")
        page.screenshot(path=images / SCREENSHOTS[size])
    assert (images / SCREENSHOTS[size]).stat().st_size > 10_000

    # download what is heard, in flac: the sum of the stems at their gains
    job_id = page.evaluate("new URLSearchParams(location.hash.slice(1)).get('job')")
    tab_to(page, "#format")
    page.keyboard.press("ArrowDown")  # wav → flac
    assert page.input_value("#format") == "flac"
    tab_to(page, "#mix")
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    assert download.value.suggested_filename == f"a_song_for_the_{size}-mix.flac"
    mix = read(Path(download.value.path()).read_bytes())
    stems = {t: read(store.stem_file(job_id, t, "wav")[0].read_bytes()) for t in TARGETS}
    expected = sum(gain * stems[t] for t, gain in heard.items() if gain and t != ORIGINAL)
    assert np.abs(expected).max() > 0.05  # not silence
    np.testing.assert_allclose(mix, expected, atol=1.5 / 32768)  # 16-bit flac
    page.wait_for_selector(f"#mix-note:has-text('Downloaded a_song_for_the_{size}-mix.flac')")

    # and the zip of every stem
    tab_to(page, "#zip")
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    with zipfile.ZipFile(download.value.path()) as archive:
        names = sorted(archive.namelist())
    assert names == sorted(f"a_song_for_the_{size}/{t}.flac" for t in TARGETS)

    assert page.evaluate("window.mouseEvents") == []
    assert page.problems == []


def shown(page, record: dict) -> None:
    """Waits until the page shows the job's record, or a newer one."""
    page.wait_for_function(
        "([id, revision]) => state.jobs.get(id)?.revision >= revision",
        arg=[record["id"], record["revision"]],
    )


def test_focus_stays_through_progress_and_layout_holds(served, page_at, tmp_path):
    store, url = served
    page = page_at("phone")
    song = tmp_path / "a rather long name for a song, to see how it wraps on a phone.wav"
    write_song(song, 16.0, seed=7)
    page.goto(url)
    page.wait_for_selector("html[data-state=ready]")
    page.wait_for_selector("html[data-list=shown]")  # the page follows the jobs' changes now
    page.evaluate(
        """() => { window.blurs = 0; window.updates = 0;
            document.addEventListener('focusout', () => window.blurs++, true);
            new MutationObserver(() => window.updates++).observe(
                document.querySelector('#jobs'), {subtree: true, characterData: true,
                                                   childList: true}); }"""
    )
    with Held(store) as held:  # the job's start and progress, each shown before the next
        page.set_input_files("#files", str(song))
        delete = page.locator(f"#jobs li:has-text('{song.name}') button.delete")
        delete.focus()
        before = focused(page)
        shown(page, held.next())
        assert page.is_visible("#jobs li.state-running")
        assert axe_violations(page) == []  # during a job
        for _ in range(10):
            shown(page, held.next())
    page.wait_for_function("() => window.updates >= 10")
    page.wait_for_selector("#jobs li.state-done")
    assert page.evaluate("window.blurs") == 0
    assert focused(page) == before
    page.wait_for_selector("#player[data-state=ready]")
    assert page.evaluate("document.documentElement.scrollWidth") <= SIZES["phone"][0]
    assert page.problems == []


def test_offline_models_failed_job_and_not_audio(served, page_at, tmp_path):
    store, url = served
    page = page_at("desktop")
    page.goto(url)
    page.wait_for_selector("html[data-state=ready]")
    page.wait_for_selector("html[data-list=shown]")  # the job below is a change, not the list
    assert page.get_attribute("#model option[value=umxl]", "disabled") is not None
    assert page.text_content("#model option[value=umxl]") == "umxl (not available)"
    note = page.text_content("#unavailable")
    assert "umxl" in note and "offline mode is on" in note and "umx download umxl" in note
    # said with the model's choice, after what the chosen model is
    told = description(page, "#model")
    assert told.startswith(page.text_content("#model-note")) and told.endswith(note.strip())

    # a job of umxl (by the API: the page offers it no more) fails; one line, details, Retry
    song = tmp_path / "offline.wav"
    write_song(song, 1.0, seed=3)
    options = store.options("umxl", "all")
    upload = store.new_upload("offline.wav", 1 << 30)
    upload.write(song.read_bytes())
    with Held(store) as held:  # its start shown before it fails, which is then a change
        job, _ = store.add(upload, options)
        shown(page, held.next())
    assert wait(store, job["id"])["state"] == "failed"
    item = page.locator(f"#job-{job['id']}")
    item.locator(".error").wait_for()
    summary = (  # what is wrong, and what to do
        "offline mode is on and model umxl is not in the cache: run UMX_OFFLINE=0 umx download "
        "umxl, then Retry"
    )
    assert item.locator(".error").text_content() == summary
    assert item.locator("details").is_visible()
    assert "umx" in item.locator("details p").text_content()
    # screen readers hear it: the page saw the job start, so its end is a change it tells
    assert said(page) == f"offline.wav: failed: {summary}"
    assert page.get_attribute("#announcer", "role") == "status"
    page.evaluate("(job) => updateJob(job)", job)  # the queued record, come late: dropped
    assert item.get_attribute("class") == "state-failed" and item.locator(".error").is_visible()
    assert axe_violations(page) == []
    # Retry is described by the error, that a screen reader says with it; Details named after
    # its song
    assert description(page, f"#job-{job['id']} summary", "name") == (
        "Details of offline.wav (umxl, all stems)"
    )
    assert description(page, f"#job-{job['id']} .retry") == item.locator(".error").text_content()
    first = store.job(job["id"])["finished"]
    item.locator("button.retry").focus()
    with page.expect_response(f"**/api/jobs/{job['id']}/retry") as retried:
        page.keyboard.press("Enter")
    assert retried.value.status == 200
    page.wait_for_function("() => document.activeElement.classList.contains('delete')")
    again = failed_again(store, job["id"], first)
    # retried elsewhere (another tab, the API) while the focus is on Retry: it goes to Delete
    item.locator("button.retry").wait_for()  # the page saw it fail
    item.locator("button.retry").focus()
    assert focused(page).startswith("button#.retry[")
    with Held(store) as held:  # seen to start again before it fails again
        store.retry(job["id"])
        shown(page, held.next())
        page.wait_for_function("() => document.activeElement.classList.contains('delete')")
    again = failed_again(store, job["id"], again["finished"])

    # deleted elsewhere (another tab, the API), then an answer about it comes late: not shown;
    # the same song sent again is the same job (its id), and is shown again
    store.delete(job["id"])
    item.wait_for(state="detached")
    assert said(page) == "offline.wav removed"
    page.evaluate("(job) => updateJob(job)", again)
    assert item.count() == 0
    upload = store.new_upload("offline.wav", 1 << 30)
    upload.write(song.read_bytes())
    with Held(store) as held:
        assert store.add(upload, options)[0]["id"] == job["id"]
        shown(page, held.next())
    item.locator(".error").wait_for()
    assert said(page) == f"offline.wav: failed: {summary}"

    # a file that is not audio, whatever its name, is refused in plain words
    notes = tmp_path / "notes.mp3"
    notes.write_text("these are not the droids you are looking for\n" * 50)
    page.set_input_files("#files", str(notes))
    error = page.wait_for_selector("#jobs li.upload .error:not([hidden])")
    assert error.text_content().startswith("notes.mp3 is not decodable audio")
    assert said(page) == error.text_content()
    assert description(page, "#jobs li.upload .dismiss") == error.text_content()
    assert page.problems == [  # that refusal, and nothing else (no favicon 404, no error)
        "Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)"
    ]


def failed_again(store, job_id: str, finished: float) -> dict:
    """The job's record once it failed again after `finished` (retried: still offline)."""
    for _ in range(600):
        again = wait(store, job_id)
        if again["finished"] != finished:
            break
    assert again["state"] == "failed" and again["finished"] > finished
    return again


def test_a_refused_name_is_announced_as_the_server_names_it(served, page_at):
    _, url = served
    page = page_at("desktop")
    page.goto(url)
    page.wait_for_selector("html[data-state=ready]")
    name = "<b>bold</b>x\u2026.wav"  # a "/": the server shows its last component only
    page.evaluate("(name) => upload(new File(['not audio, just text'], name))", name)
    error = page.wait_for_selector("#jobs li.upload .error:not([hidden])")
    assert error.text_content().startswith("b>x\u2026.wav is not decodable audio")
    assert said(page) == error.text_content()  # one name, not two
    assert page.text_content("#jobs li.upload .name") == "b>x\u2026.wav"


def finish(store, song: Path, stems: str = "all") -> str:
    """The id of a finished umxsynth job of the song, sent through the API (the same song with
    other stems is another job)."""
    upload = store.new_upload(song.name, 1 << 30)
    upload.write(song.read_bytes())
    job, _ = store.add(upload, store.options("umxsynth", stems))
    assert wait(store, job["id"])["state"] == "done"
    return job["id"]


@pytest.fixture(scope="module")
def finished_song(tmp_path_factory) -> Path:
    song = tmp_path_factory.mktemp("finished") / "finished song.wav"
    write_song(song, 2.0, seed=11)
    return song


@pytest.fixture(scope="module")
def finished(served, finished_song):
    """The id of a finished job (every stem) of a 2-s song."""
    return finish(served[0], finished_song)


def open_player(page, url: str, job_id: str) -> None:
    """The page with the job's player open and ready (its id in the address opens it)."""
    page.goto(f"{url}#job={job_id}")
    page.wait_for_selector("#player[data-state=ready]")


def test_larger_text_on_a_small_phone_does_not_scroll_sideways(served, finished, page_at):
    page = page_at(SMALL_PHONE)
    open_player(page, served[1], finished)
    for percent in (100, 150, 200):  # the browser's text size, as a phone's setting makes it
        page.evaluate(f"document.documentElement.style.fontSize = '{percent}%'")
        width = page.evaluate(
            "() => { const s = document.scrollingElement; return [s.scrollWidth, s.clientWidth]; }"
        )
        assert width[0] <= width[1], f"{percent} %: {width[0]} px wide in {width[1]}"
        # nor is a select cut off by its label or its panel
        beyond = page.evaluate(
            """() => [...document.querySelectorAll('select')].filter((select) => {
                const right = select.getBoundingClientRect().right;
                return right > select.closest('label').getBoundingClientRect().right + 0.5 ||
                    right > select.closest('section').getBoundingClientRect().right; })
                .map((select) => select.id)"""
        )
        assert beyond == [], f"{percent} %"
        if percent == 100:  # and every choice is read whole in its closed select
            assert cut_options(page) == []
    assert page.problems == []


def cut_options(page) -> list[str]:
    """The ids of the page's selects with an option wider than the select shows it: its
    content box less its arrow's room, which the Format select shows (sized to its widest
    option, it is that option's width, its padding and the arrow's room)."""
    return page.evaluate(
        """() => {
            const text = document.createElement('canvas').getContext('2d');
            const widest = (select) => Math.max(...[...select.options].map((option) => {
                text.font = getComputedStyle(select).font;
                return text.measureText(option.text).width; }));
            const inside = (select) => { const style = getComputedStyle(select);
                return select.clientWidth - parseFloat(style.paddingLeft) -
                    parseFloat(style.paddingRight); };
            const arrow = inside(document.querySelector('#format')) -
                widest(document.querySelector('#format'));
            return [...document.querySelectorAll('select')].filter((select) =>
                widest(select) > inside(select) - arrow + 0.5).map((select) => select.id); }"""
    )


def test_the_focus_stays_on_the_page_when_the_song_played_is_deleted_elsewhere(
    served, finished_song, page_at
):
    store, url = served
    job_id = finish(store, finished_song, "drums")  # its own job: this test deletes it
    page = page_at("desktop")
    open_player(page, url, job_id)
    tab_to(page, "[aria-label='Mute drums']")
    store.delete(job_id)  # another tab, the API
    page.wait_for_selector("#player", state="hidden")
    assert said(page) == f"{finished_song.name} removed"
    assert focused(page) == "h2#songs-title.[]"  # as after its own Delete, not the page's start
    assert outline(page) == ["solid", "3px"]  # and shown, as on a control
    assert page.problems == []


def test_a_song_sent_is_said_whether_its_event_or_the_answer_comes_first(served, finished, page_at):
    url = served[1]
    page = page_at("desktop")
    page.goto(url)
    # the first list of songs has come (it would remove the songs made up below)
    page.wait_for_selector(f"#job-{finished}")
    page.evaluate(
        """() => { window.said = []; const region = document.querySelector('#announcer');
            new MutationObserver(() => window.said.push(region.textContent)).observe(
                region, {subtree: true, childList: true, characterData: true}); }"""
    )
    records = [
        {"id": f"{n:016x}", "name": f"queued {n}.wav", "state": "queued", "position": n,
         "revision": 1, "created": 1e10 + n, "model": "umxsynth", "stems": "all",
         "progress": 0, "targets": TARGETS}
        for n in (1, 2)
    ]  # fmt: skip
    answers = iter(records)
    # the upload's answer, made here: the job stays queued, and the event can be made to come first
    page.route("**/api/jobs?*", lambda route: route.fulfill(status=201, json=next(answers)))

    # the server's event of the new job first (not yet known as sent from here), then the answer
    page.evaluate("(job) => updateJob(job)", records[0])
    assert page.evaluate("unsaid.size") == 0 and page.evaluate("window.said") == []
    page.evaluate("() => upload(new File(['a song'], 'queued 1.wav'))")
    page.wait_for_selector("#jobs li.upload", state="detached")  # the answer was read
    # the answer first, then the event: said once
    page.evaluate("() => upload(new File(['a song'], 'queued 2.wav'))")
    page.wait_for_selector("#jobs li.upload", state="detached")
    page.evaluate("(job) => updateJob(job)", {**records[1], "revision": 2})
    said(page)
    assert ". ".join(page.evaluate("window.said")) == (
        "queued 1.wav: next in the queue. queued 2.wav: waiting, 2nd in the queue"
    )

    # one song ends and the next starts: two events, a millisecond apart; both are said, as one
    page.evaluate("window.said = []")
    ended = {**records[0], "state": "failed", "error": "the disk is full", "revision": 3}
    started = {**records[1], "state": "running", "position": None, "revision": 3}
    page.evaluate(
        "(jobs) => { for (const job of jobs) setTimeout(() => updateJob(job)); }", [ended, started]
    )
    said(page)
    assert page.evaluate("window.said") == [
        "queued 1.wav: failed: the disk is full. queued 2.wav: separating"
    ]
    assert page.problems == []


def test_a_song_sent_elsewhere_whose_first_news_is_its_end_is_said(served, page_at):
    """A busy server sends only the newest of a song's changes that come together: a song sent
    by another tab or the API that failed (or was separated) at once comes first as failed (or
    done), and is said as one seen queued is, not taken for a song of the list the page opens
    with, which is not said; nor is a song sent elsewhere that comes queued."""
    page = page_at("desktop")
    known = {"position": None, "created": 1e10, "model": "umxsynth", "stems": "all",
             "progress": 0, "targets": TARGETS, "duration": 1.0}  # fmt: skip
    failed = {"state": "failed", "error": "the disk is full", "error_summary": "the disk is full"}
    listed = {**known, **failed, "id": "a" * 32, "name": "listed.wav", "revision": 1}
    news = [
        {**known, **failed, "id": "b" * 32, "name": "failed.wav", "revision": 2},
        {**known, "id": "c" * 32, "name": "done.wav", "state": "done", "seconds": 1.2,
         "progress": 1.0, "revision": 3},
        {**known, "id": "d" * 32, "name": "queued.wav", "state": "queued", "position": 1,
         "revision": 4},
    ]  # fmt: skip
    told = [("jobs", [listed]), *(("job", record) for record in news)]
    body = "retry: 600000\n\n" + "".join(  # no try again while the test runs
        f"event: {event}\ndata: {json.dumps(data)}\n\n" for event, data in told
    )
    page.route(
        "**/api/events",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body),
    )
    page.goto(served[1])
    page.wait_for_selector(f"#job-{'d' * 32}")  # the last news read
    assert said(page) == "failed.wav: failed: the disk is full. done.wav: done in 1.2 s"
    assert page.problems == []


def test_a_lost_connection_is_said_once_and_so_is_its_return(served, page_at):
    page = page_at("desktop")
    page.clock.install()  # the page's timers run when the test says
    page.add_init_script(
        """window.statuses = []; document.addEventListener('DOMContentLoaded', () => {
            const status = document.querySelector('#connection');
            new MutationObserver(() => statuses.push(status.textContent)).observe(
                status, {subtree: true, childList: true, characterData: true}); });"""
    )
    tries = []  # the server away: each try of its events ends at once, the next 50 ms later

    def away(route):
        tries.append(route)
        route.fulfill(status=200, content_type="text/event-stream", body="retry: 50\n\n")

    page.route("**/api/events", away)
    page.goto(served[1])
    page.wait_for_function("() => document.documentElement.dataset.state === 'ready'")
    while len(tries) < 6:
        page.wait_for_timeout(50)
    lost = "The connection to the server was lost; retrying\u2026"
    assert page.evaluate("window.statuses") == [lost]  # said once, not at each try
    page.unroute("**/api/events", away)  # the server back
    page.wait_for_function("() => statuses.length === 2")
    assert page.evaluate("window.statuses") == [lost, "Connected again."]
    page.clock.run_for(5000)
    assert page.evaluate("window.statuses") == [lost, "Connected again.", ""]
    assert page.problems == []


def test_the_song_in_the_player_is_told_apart_from_the_others(
    served, finished, finished_song, page_at, tmp_path
):
    store, url = served
    other = finish(store, finished_song, "vocals")  # the same file, other stems
    alike = []  # other files of the same name, separated alike
    for seed in (21, 22):
        song = tmp_path / str(seed) / finished_song.name
        song.parent.mkdir()
        write_song(song, 1.0, seed=seed)
        alike.append(finish(store, song))
    page = page_at("desktop")
    open_player(page, url, finished)
    current = page.locator(f"#job-{finished}")
    assert current.get_attribute("aria-current") == "true"
    assert "in the player" in current.locator(".meta").inner_text()  # in words, not colour alone
    assert page.get_attribute(f"#job-{other}", "aria-current") is None
    assert "in the player" not in page.locator(f"#job-{other} .meta").inner_text()
    # the same file twice: their buttons' names differ (by their stems), each says its action
    for action in ("listen", "delete"):
        names = [
            page.get_attribute(f"#job-{job} .{action}", "aria-label") for job in (finished, other)
        ]
        assert names[0] != names[1] and all(name.lower().startswith(action) for name in names)
        assert all(finished_song.name in name and "umxsynth" in name for name in names)
    # songs alike in file name, model and stems: numbered in the order they were added, in the
    # list and in their controls' names; numbered again when one goes
    name = finished_song.name

    def names():
        return [
            [
                page.text_content(f"#job-{job} .name"),
                description(page, f"#job-{job} .listen", "name"),
            ]
            for job in (finished, *alike)
        ]

    assert names() == [
        [name, f"Listen to {name} (umxsynth, all stems)"],
        [f"{name} (2)", f"Listen to {name} (2) (umxsynth, all stems)"],
        [f"{name} (3)", f"Listen to {name} (3) (umxsynth, all stems)"],
    ]
    store.delete(alike[0])
    page.wait_for_selector(f"#job-{alike.pop(0)}", state="detached")
    assert said(page) == f"{name} (2) removed"
    assert names() == [
        [name, f"Listen to {name} (umxsynth, all stems)"],
        [f"{name} (2)", f"Listen to {name} (2) (umxsynth, all stems)"],
    ]
    store.delete(alike.pop())
    # a song separated again (its stems found damaged) while the focus is on its Listen: Listen
    # is disabled, and the focus goes to its Delete
    page.focus(f"#job-{other} .listen")
    page.evaluate(
        """(id) => { const job = state.jobs.get(id);
            updateJob({...job, state: "running", progress: 0, revision: job.revision + 1}); }""",
        other,
    )
    assert page.is_disabled(f"#job-{other} .listen")
    assert page.evaluate("(id) => document.activeElement.matches(`#job-${id} .delete`)", other)
    assert page.problems == []


def test_stems_that_fail_to_load_offer_to_try_again(served, finished, page_at):
    page = page_at("desktop")

    def fail(route):  # one stem's answer
        route.fulfill(status=503, json={"error": "the disk is busy"})

    page.route("**/stems/vocals.wav", fail)
    page.goto(f"{served[1]}#job={finished}")
    page.wait_for_selector("#player[data-state=failed]")
    assert page.text_content("#loading") == "The stems could not be loaded: the disk is busy"
    # nothing that acts on stems not loaded: no presets, no downloads, no wrong message
    assert page.is_hidden(".presets") and page.is_hidden(".downloads")
    page.unroute("**/stems/vocals.wav", fail)
    page.focus("#reload")
    page.keyboard.press("Enter")
    page.wait_for_selector("#player[data-state=ready]")
    assert page.is_visible(".presets") and page.is_visible("#mix") and page.is_hidden("#reload")
    assert focused(page) == "h2#title.[]"
    assert outline(page) == ["solid", "3px"]
    assert page.problems == [
        "Failed to load resource: the server responded with a status of 503 (Service Unavailable)"
    ]


def test_an_upload_can_be_cancelled_and_its_end_keeps_the_focus(served, page_at):
    page = page_at("desktop")
    page.goto(served[1])
    page.wait_for_selector("html[data-state=ready]")
    page.wait_for_selector("html[data-list=shown]")  # it would remove the song made up below
    page.evaluate(
        """() => { window.aborted = 0; const abort = XMLHttpRequest.prototype.abort;
            XMLHttpRequest.prototype.abort = function () { window.aborted++;
                return abort.call(this); }; }"""
    )
    sending = []  # the uploads' requests, answered below (or never: still sending)
    page.route("**/api/jobs?*", lambda route: sending.append(route))
    page.evaluate("() => upload(new File(['a long song'], 'slow.wav'))")
    cancel = page.locator("#jobs li.upload button.cancel")
    assert cancel.count() == 1 and cancel.is_visible()
    assert cancel.get_attribute("aria-label") == "Cancel the upload of slow.wav"
    cancel.focus()
    page.keyboard.press("Enter")
    assert page.evaluate("window.aborted") == 1
    assert page.locator("#jobs li.upload").count() == 0
    assert focused(page) == "button#choose.[]"  # where the next song is chosen
    assert said(page) == "slow.wav: upload cancelled"

    # the answer comes while the focus is on Cancel: the upload's item goes, the song's comes,
    # and the focus goes to its first control (queued: Delete), not to the page's start
    page.evaluate("() => upload(new File(['a song'], 'sent.wav'))")
    page.focus("#jobs li.upload button.cancel")
    record = {"id": "e" * 32, "name": "sent.wav", "state": "queued", "position": 1,
              "revision": 1, "created": 1e10, "model": "umxsynth", "stems": "all",
              "progress": 0, "targets": TARGETS}  # fmt: skip
    sending[-1].fulfill(status=201, json=record)
    page.wait_for_selector("#jobs li.upload", state="detached")
    assert focused(page) == "button#.delete[Delete sent.wav (umxsynth, all stems)]"
    # refused while the focus is on Cancel: the focus goes to its Dismiss
    page.evaluate("() => upload(new File(['a song'], 'refused.wav'))")
    page.focus("#jobs li.upload button.cancel")
    sending[-1].fulfill(status=422, json={"error": "refused.wav is not decodable audio"})
    page.wait_for_selector("#jobs li.upload .error:not([hidden])")
    assert focused(page) == "button#.dismiss[Dismiss refused.wav]"
    assert page.problems == [
        "Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)"
    ]


def test_stem_downloads_show_their_stem_and_the_waveforms_line_up(served, finished, page_at):
    page = page_at("desktop")
    open_player(page, served[1], finished)
    for stem in TARGETS:
        link = f".track[data-stem={stem}] a.download"
        shown = page.eval_on_selector(
            link,
            """(a) => [...a.childNodes].filter((n) => !n.classList?.contains('visually-hidden'))
                .map((n) => n.textContent).join('')""",
        )
        assert shown == f"↓ {stem}"  # the visible words are in the name
        assert description(page, link, "name") == f"Download {stem}"
    # the rows share their columns: the waveforms start and end alike, the original's too
    edges = page.locator(".track canvas").evaluate_all(
        "canvases => canvases.map((c) => { const box = c.getBoundingClientRect();"
        "    return [box.left, box.right]; })"
    )
    assert len(edges) == 5 and all(edge == edges[0] for edge in edges)
    assert page.problems == []


def contrast(first: tuple[float, ...], second: tuple[float, ...]) -> float:
    """WCAG's contrast ratio of two sRGB colours (0-255 channels)."""

    def luminance(colour):
        linear = [
            c / 255 / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in colour
        ]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(first[:3]), luminance(second[:3])), reverse=True)
    return (high + 0.05) / (low + 0.05)


def waveform_colours(page, opaque: int = 255) -> list[tuple[tuple[float, ...], set[tuple]]]:
    """Each waveform's background as shown and the colours drawn on it: its pixels at least
    `opaque` (of 255) opaque, not an edge's antialiasing, composited over that background."""
    rows = page.evaluate(
        """(opaque) => [...document.querySelectorAll('#tracks canvas')].map((canvas) => {
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
            const seen = new Set();
            for (let i = 0; i < data.data.length; i += 4)
                if (data.data[i + 3] >= opaque) seen.add(data.data.slice(i, i + 4).join());
            return [getComputedStyle(canvas).backgroundColor, [...seen]]; })""",
        opaque,
    )
    shown = []
    for background, pixels in rows:
        back = tuple(int(v) for v in background[4:-1].split(","))
        colours = set()
        for pixel in pixels:
            *rgb, alpha = (int(v) for v in pixel.split(","))
            opacity = alpha / 255
            colours.add(
                tuple(c * opacity + b * (1 - opacity) for c, b in zip(rgb, back, strict=True))
            )
        shown.append((back, colours))
    return shown


def test_waveforms_keep_3_to_1_and_a_silent_track_is_said_in_words(served, finished, page_at):
    """Every colour a waveform is drawn in (played per stem, not played yet, as drawn on the
    canvas) stands at 3:1 or more against its row's background; a silent track (the original
    mix starts muted) is greyed and labelled "silent", not faded below that."""
    page = page_at("desktop")
    open_player(page, served[1], finished)
    colours = waveform_colours(page)
    drawn = set(page.evaluate("[...Object.values(COLORS), UNPLAYED, PLAYHEAD]"))
    assert len(colours) == 5
    for back, pixels in colours:
        assert pixels  # drawn: the stems are not silent
        for pixel in pixels:  # the playhead and the not played part at position 0
            assert contrast(pixel, back) >= 3, (pixel, back)
        for colour in drawn:
            rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
            assert contrast(rgb, back) >= 3, (colour, back)
    silent = page.locator(".track.original")
    assert "silent" in silent.get_attribute("class")
    look = (
        "(row) => [getComputedStyle(row.querySelector('canvas')).filter, "
        "getComputedStyle(row.querySelector('canvas')).opacity, "
        "getComputedStyle(row.querySelector('.label'), '::after').content]"
    )
    assert silent.evaluate(look) == ["grayscale(1)", "1", '" · silent"']
    assert page.locator(".track.stem").first.evaluate(look)[2] == "none"
    assert page.problems == []


def test_forced_colours_keep_pressed_buttons_and_waveforms_apart(served, finished, page_at):
    """In forced colours (Windows' contrast themes, dark and light), pressed and unpressed
    buttons differ, and the waveforms are drawn again in the system's colours, each at 3:1 or
    more against the canvas's background as shown (the system's too); the playhead too."""
    page = page_at("desktop")
    open_player(page, served[1], finished)
    page.evaluate("state.player.seek(state.player.duration / 2)")  # played, and not yet
    look = """(button) => { const style = getComputedStyle(button);
        return [style.backgroundColor, style.color, style.borderTopColor]; }"""
    pressed = page.locator("[aria-label='Mute original mix']")  # the original starts muted
    assert pressed.get_attribute("aria-pressed") == "true"
    assert page.get_attribute("[aria-label='Mute vocals']", "aria-pressed") == "false"
    for scheme in ("dark", "light"):
        page.emulate_media(forced_colors="active", color_scheme=scheme)
        assert pressed.evaluate(look) != page.locator("[aria-label='Mute vocals']").evaluate(look)
        # redrawn: the playhead's top (above every waveform) in the text's colour
        page.wait_for_function(
            """() => [...document.querySelectorAll('#tracks canvas')].every((canvas) => {
                const x = Math.round(state.player.position() / state.player.duration *
                    canvas.width);
                const [r, g, b] = canvas.getContext('2d').getImageData(x, 0, 1, 1).data;
                return `rgb(${r}, ${g}, ${b})` === getComputedStyle(canvas).color; })""",
            timeout=5000,
        )
        for background, pixels in waveform_colours(page, opaque=200):  # Highlight: 80 %
            assert len(pixels) >= 3  # played, not played, the playhead
            for pixel in pixels:
                assert contrast(pixel, background) >= 3, (scheme, pixel, background)
    assert page.problems == []
