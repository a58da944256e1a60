// The page of `umx serve`: uploads, the list of songs (live through server-sent events) and a
// player of the stems and the original mix in sync (Web Audio: one AudioBufferSourceNode and one
// GainNode per track). Live updates change elements in place, so that the focus stays put.
"use strict";

const $ = (selector) => document.querySelector(selector);
// the part not played yet: 3:1 or more against the waveforms' backgrounds, as every colour here
const UNPLAYED = "#767a80";
const COLORS = {
  vocals: "#d9480f", drums: "#2d6cdf", bass: "#7048e8", other: "#2b8a3e",
  accompaniment: "#2b8a3e", mixture: "#495057",
};
const PLAYHEAD = "#1d1d1f";
// forced colours (contrast themes): a canvas takes the system's background, not its drawing
const FORCED = matchMedia("(forced-colors: active)");
const ORIGINAL = "mixture";  // the original mix's track (umx.web.records.ORIGINAL)
const SEEK_STEP = 5;  // seconds per arrow key on the position slider
const SEEK_PAGE = 30;  // seconds per Page Up / Page Down
const SAY_MS = 300;  // what comes to be said within this time of the first is said with it
const LOST = "The connection to the server was lost; retrying…";
const BACK_MS = 5000;  // how long "Connected again." is shown
// deleted: the revision at which each job deleted while the page is open (by it or elsewhere)
// was last seen; the same song sent again with the same options gets the same id, and a larger
// revision; told: the state last said to screen readers of each job
const state = { config: null, jobs: new Map(), uploads: new Map(), ours: new Set(),
  deleted: new Map(), told: new Map(), player: null };
let audioContext = null;

// --- helpers ---------------------------------------------------------------------------------

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function clock(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

function ordinal(n) {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ["th", "st", "nd", "rd"][n % 10] || "th";
  return `${n}${suffix}`;
}

async function errorOf(response) {
  try {
    return (await response.json()).error || response.statusText;
  } catch {
    return `the server answered ${response.status} ${response.statusText}`;
  }
}

// Tells screen readers a change the eye sees in the list: an upload refused, a song queued,
// separating, done, failed or removed (a polite live region: read once the reader is idle).
// What comes within SAY_MS is said at once ("q1.wav: done in 1.3 s. q2.wav: separating"): a
// text replaced before a reader read it is lost; a song's (or upload's) newer state replaces
// its older one still waiting.
const unsaid = new Map();  // the texts waiting, by song or upload
function announce(text, about) {
  if (!unsaid.size) setTimeout(sayUnsaid, SAY_MS);
  unsaid.delete(about);
  unsaid.set(about, text);
}

function sayUnsaid() {
  $("#announcer").textContent = [...unsaid.values()].join(". ");
  unsaid.clear();
}

// Moves the focus into an item of the list: to its first control that can take it (a song's
// Listen, Retry or Delete, an upload's Cancel or Dismiss), or, with no item, to Choose files….
function focusItem(item) {
  (item?.querySelector(".actions button:enabled:not([hidden])") || $("#choose")).focus();
}

// After an item changed: the focus on a control of it that the change hid or disabled goes to
// the item's first control left, not to the page's start (where a browser would leave it).
function keepFocus(item, control) {
  if (item.contains(control) && (control.disabled || control.closest("[hidden]"))) {
    focusItem(item);
  }
}

// A text of the server's with commands in backticks (a model's notice): the commands as <code>.
function withCode(text) {
  return text.split("`").map((part, index) => (index % 2 ? element("code", { text: part }) : part));
}

function modelInfo(name) {
  return state.config.models.find((model) => model.name === name);
}

// --- configuration ---------------------------------------------------------------------------

async function loadConfig() {
  const response = await fetch("/api/config");
  state.config = await response.json();
  const select = $("#model");
  for (const info of state.config.models) {
    const note = !info.available ? "not available"
      : info.status === "bundled" || info.status === "cached" ? info.status
        : info.status === "directory" ? "folder" : "downloads on first use";
    const option = element("option", { value: info.name, text: `${info.name} (${note})` });
    option.disabled = !info.available;
    select.append(option);
  }
  select.value = state.config.default_model;
  select.onchange = renderModelChoice;
  renderUnavailable();
  renderModelChoice();
  for (const ext of state.config.formats) $("#format").append(element("option", { text: ext }));
  $("#limit").textContent = state.config.max_upload_mb;
  $("#version").textContent = `umx ${state.config.version}`;
}

// The stem modes of the chosen model, and what it is (a demonstration model says so).
function renderModelChoice() {
  const info = modelInfo($("#model").value);
  const stems = $("#stems");
  const before = stems.value;
  stems.replaceChildren(...Object.entries(info.stems).map(
    ([value, text]) => element("option", { value, text })));
  if (before in info.stems) stems.value = before;
  $("#model-note").replaceChildren(...withCode(info.notice || info.description));
}

// The models that cannot be had now, grouped by reason, with the command that gets them.
function renderUnavailable() {
  const byReason = new Map();
  for (const info of state.config.models.filter((model) => !model.available)) {
    byReason.set(info.reason, [...(byReason.get(info.reason) || []), info]);
  }
  const note = $("#unavailable");
  note.hidden = byReason.size === 0;
  note.replaceChildren();
  for (const [reason, models] of byReason) {
    note.append(`Not available now: ${models.map((model) => model.name).join(", ")} (${reason}); `,
      "get one with ", element("code", { text: models[0].get }), ". ");
  }
}

// --- uploads ---------------------------------------------------------------------------------

let uploadCount = 0;

// A file's name as the server shows it (umx.web.records.display_name): its last component,
// printable, at most 200 characters, never empty; the page and the server's answers then name
// a file alike (`a/b.wav` is `b.wav` in both).
function displayName(name) {
  const last = name.split(/[/\\]/).pop()
    .replace(/[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, "").trim();
  return Array.from(last).slice(0, 200).join("") || "untitled";
}

function upload(file) {
  const key = `upload-${++uploadCount}`;
  const entry = { key, name: displayName(file.name), progress: 0, error: null };
  state.uploads.set(key, entry);
  if (file.size > state.config.max_upload_bytes) {
    entry.error = `${entry.name} is larger than the upload limit of ` +
      `${state.config.max_upload_mb} MB`;
    renderUpload(entry);
    return;
  }
  renderUpload(entry);
  const query = new URLSearchParams({ name: file.name, model: $("#model").value,
    stems: $("#stems").value });
  const request = new XMLHttpRequest();
  entry.request = request;  // its Cancel aborts it
  request.open("POST", `/api/jobs?${query}`);
  request.upload.onprogress = (event) => {
    if (event.lengthComputable) entry.progress = event.loaded / event.total;
    renderUpload(entry);
  };
  request.onload = () => {
    let body = null;
    try { body = JSON.parse(request.responseText); } catch { body = null; }
    if (request.status === 200 || request.status === 201) {
      state.uploads.delete(key);
      const item = document.getElementById(key);
      const hadFocus = item?.contains(document.activeElement);  // its Cancel, say
      item?.remove();
      const known = state.jobs.get(body.id);
      state.ours.add(body.id);
      // the events may have told more already: this answer is older than they are; the job
      // they showed before it was ours was not said (its place in the queue, say): say it now
      if (!known) updateJob(body);
      else if (state.told.get(body.id) !== known.state) announceJob(known);
      if (state.jobs.get(body.id).state === "done" && !state.player) openPlayer(body.id);
      if (hadFocus) focusItem(document.getElementById(`job-${body.id}`));
    } else {
      entry.error = body?.error || `the server answered ${request.status}`;
      renderUpload(entry);
    }
  };
  request.onerror = () => {
    entry.error = `${entry.name} could not be sent: the connection to the server was lost`;
    renderUpload(entry);
  };
  request.send(file);
}

function renderUpload(entry) {
  const focused = document.activeElement;
  let item = document.getElementById(entry.key);
  if (!item) {
    const dismiss = element("button", { type: "button", class: "dismiss", text: "Dismiss",
      "aria-label": `Dismiss ${entry.name}`, "aria-describedby": `${entry.key}-error` });
    const drop = () => {
      state.uploads.delete(entry.key);
      item.remove();
      renderEmpty();
      $("#choose").focus();  // the item and its buttons are gone: where the next song is chosen
    };
    dismiss.onclick = drop;
    const cancel = element("button", { type: "button", class: "cancel", text: "Cancel",
      "aria-label": `Cancel the upload of ${entry.name}` });
    cancel.onclick = () => {
      entry.request?.abort();
      drop();
      announce(`${entry.name}: upload cancelled`, entry.key);
    };
    item = element("li", { id: entry.key, class: "upload" },
      element("span", { class: "name", text: entry.name }),
      element("span", { class: "actions" }, cancel, dismiss),
      element("span", { class: "meta" }, element("span", { class: "state" })),
      element("progress", { max: "1", value: "0", "aria-label": `Uploading ${entry.name}` }),
      element("p", { class: "error problem", id: `${entry.key}-error` }));
    $("#jobs").prepend(item);
  }
  item.className = entry.error ? "upload state-failed" : "upload";
  item.querySelector(".dismiss").hidden = !entry.error;
  item.querySelector(".cancel").hidden = Boolean(entry.error);
  item.querySelector(".state").textContent = entry.error ? "refused"
    : `uploading ${Math.round(entry.progress * 100)} %`;
  item.querySelector("progress").hidden = Boolean(entry.error);
  item.querySelector("progress").value = entry.progress;
  item.querySelector(".error").hidden = !entry.error;
  item.querySelector(".error").textContent = entry.error || "";
  if (entry.error && !entry.announced) {
    announce(entry.error.includes(entry.name) ? entry.error
      : `${entry.name} refused: ${entry.error}`, entry.key);
  }
  entry.announced = Boolean(entry.error);
  renderEmpty();
  keepFocus(item, focused);  // a refused upload's Cancel goes: its Dismiss has the focus
}

function setUpDrop() {
  const drop = $("#drop");
  $("#choose").onclick = () => $("#files").click();
  $("#files").onchange = (event) => {
    for (const file of event.target.files) upload(file);
    event.target.value = "";
  };
  for (const name of ["dragenter", "dragover"]) {
    document.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) drop.classList.remove("over");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    for (const file of event.dataTransfer.files) upload(file);
  });
}

// --- the list of songs -----------------------------------------------------------------------

// A job's record, from the events or from an answer: one older than the record shown, or than
// the job's deletion (an answer that events overtook), is dropped. `change`: a change the events
// tell, not the list the page opens with.
function updateJob(job, change = false) {
  const shown = state.jobs.get(job.id)?.revision ?? state.deleted.get(job.id);
  if (job.revision <= shown) return;
  if (job.state === "deleted") {
    removeJob(job.id, job.revision ?? shown);
  } else {
    const before = state.jobs.get(job.id);
    state.jobs.set(job.id, job);
    renderJob(job);
    // a change of state, or a song just sent from here; not the songs listed as the page opens.
    // A song sent elsewhere that the events first show past queued was queued all the same:
    // a busy server sends only the newest of a song's changes that come together
    const news = state.ours.has(job.id) || (change && job.state !== "queued");
    if (before ? before.state !== job.state : news) announceJob(job);
    const finished = job.state === "done" && before?.state !== "done";
    if (finished && state.ours.has(job.id) && !state.player) openPlayer(job.id);
  }
  renderEmpty();
}

// A job deleted (here, elsewhere, by the cache limit): its item goes, said to screen readers;
// the focus on it goes to the heading Songs, not to the page's start.
function removeJob(id, revision) {
  state.deleted.set(id, revision);
  state.jobs.delete(id);
  const item = document.getElementById(`job-${id}`);
  const hadFocus = item?.contains(document.activeElement);
  if (item) announce(`${item.querySelector(".name").textContent} removed`, id);
  item?.remove();
  for (const other of state.jobs.values()) renderJob(other);  // songs alike numbered again
  if (state.player?.job.id === id) closePlayer();
  if (hadFocus) $("#songs-title").focus();
}

// A job's name as the page shows it: its file's, numbered when songs alike (the same name,
// model and stems: two files of one name) were added before it ("song.wav (2)").
function jobName(job) {
  const alike = [...state.jobs.values()].filter((other) => other.created < job.created &&
    other.name === job.name && other.model === job.model && other.stems === job.stems);
  return alike.length ? `${job.name} (${alike.length + 1})` : job.name;
}

// A job as its controls name it: its name, model and stems (the same file separated twice, with
// other stems or another model, is two songs whose buttons a screen reader must tell apart).
function jobLabel(job) {
  const stems = job.stems === "all" ? "all stems" : `${job.stems} and the rest`;
  return `${jobName(job)} (${job.model}, ${stems})`;
}

// Names an item and its controls after its job: again at each change, as a song alike deleted
// numbers those after it again.
function labelItem(item, job) {
  const label = jobLabel(job);
  const actions = { ".listen": "Listen to", ".retry": "Retry", ".delete": "Delete",
    summary: "Details of", progress: "Separating" };
  for (const [selector, action] of Object.entries(actions)) {
    item.querySelector(selector).setAttribute("aria-label", `${action} ${label}`);
  }
  item.querySelector(".name").textContent = jobName(job);
}

// One song's item, made once and then changed in place (its buttons keep the focus).
function jobItem(job) {
  const id = `job-${job.id}`;
  let item = document.getElementById(id);
  if (item) return item;
  const listen = element("button", { type: "button", class: "listen", text: "Listen" });
  listen.onclick = () => openPlayer(job.id, { focus: true });
  // Retry is shown with an error only: the error describes it
  const retry = element("button", { type: "button", class: "retry", text: "Retry",
    "aria-describedby": `${id}-error` });
  retry.onclick = () => retryJob(job.id);
  const remove = element("button", { type: "button", class: "delete", text: "Delete" });
  remove.onclick = () => deleteJob(job.id);
  const details = element("details", {}, element("summary", { text: "Details" }),
    element("p", { class: "details" }));
  item = element("li", { id },
    element("span", { class: "name" }),
    element("span", { class: "actions" }, listen, retry, remove),
    element("span", { class: "meta" }, element("span", { class: "state" }),
      element("span", { class: "in-player", text: " · in the player" }),
      element("span", { class: "about" })),
    element("progress", { max: "1", value: "0" }),
    element("div", { class: "problem" }, element("p", { class: "error", id: `${id}-error` }),
      details));
  // the newest first: after the oldest of the songs newer than this one that are shown
  const newer = [...state.jobs.values()].filter((other) => other.created > job.created)
    .sort((a, b) => a.created - b.created)
    .map((other) => document.getElementById(`job-${other.id}`)).filter(Boolean);
  if (newer.length) newer[0].after(item); else $("#jobs").prepend(item);
  return item;
}

function jobStatus(job) {
  if (job.state === "queued") {
    return job.position === 1 ? "next in the queue"
      : job.position ? `waiting, ${ordinal(job.position)} in the queue` : "waiting";
  }
  if (job.state === "running") return `separating ${Math.round(job.progress * 100)} %`;
  if (job.state === "done") return `done in ${job.seconds.toFixed(1)} s`;
  return job.state;
}

function announceJob(job) {
  const told = { running: "separating", failed: `failed: ${job.error_summary || job.error}` };
  announce(`${jobName(job)}: ${told[job.state] || jobStatus(job)}`, job.id);
  state.told.set(job.id, job.state);
}

function renderJob(job) {
  const focused = document.activeElement;
  const item = jobItem(job);
  labelItem(item, job);
  item.className = `state-${job.state}`;
  // the song in the player: said in words and to screen readers, not by colour alone
  const current = state.player?.job.id === job.id;
  item.classList.toggle("current", current);
  if (current) item.setAttribute("aria-current", "true");
  else item.removeAttribute("aria-current");
  item.querySelector(".in-player").hidden = !current;
  item.querySelector(".listen").disabled = job.state !== "done";
  item.querySelector(".retry").hidden = job.state !== "failed";
  const stems = modelInfo(job.model)?.stems[job.stems] || job.stems;
  item.querySelector(".state").textContent = jobStatus(job);
  item.querySelector(".about").textContent =
    ` · ${job.model} · ${stems}${job.duration ? ` · ${clock(job.duration)}` : ""}`;
  const progress = item.querySelector("progress");
  progress.hidden = job.state !== "queued" && job.state !== "running";
  progress.value = job.progress;
  const problem = item.querySelector(".problem");
  problem.hidden = !job.error;
  problem.querySelector(".error").textContent = job.error_summary || "";
  const details = problem.querySelector("details");
  details.hidden = !job.error || job.error === job.error_summary;
  details.querySelector("p").textContent = job.error || "";
  keepFocus(item, focused);  // a Retry gone, a Listen disabled: its Delete has the focus
}

function renderEmpty() {
  $("#empty").hidden = $("#jobs").children.length > 0;
}

async function deleteJob(id) {
  const job = state.jobs.get(id);
  if (!job || !confirm(`Delete ${jobName(job)} and its stems?`)) return;
  const response = await fetch(`/api/jobs/${id}`, { method: "DELETE" });
  if (response.ok || response.status === 404) updateJob({ id, state: "deleted" });
  else alert(await errorOf(response));
}

async function retryJob(id) {
  const response = await fetch(`/api/jobs/${id}/retry`, { method: "POST" });
  if (!response.ok) {
    alert(await errorOf(response));
    return;
  }
  state.ours.add(id);
  updateJob(await response.json());  // its Retry goes, the focus to its Delete (keepFocus)
}

function listen() {
  const events = new EventSource("/api/events");
  events.addEventListener("jobs", (event) => {
    const jobs = JSON.parse(event.data);
    const ids = new Set(jobs.map((job) => job.id));
    for (const id of state.jobs.keys()) if (!ids.has(id)) updateJob({ id, state: "deleted" });
    for (const job of jobs.reverse()) updateJob(job);
    document.documentElement.dataset.list = "shown";  // the server's list: for scripts and tests
    showConnection(false);
    const wanted = new URLSearchParams(location.hash.slice(1)).get("job");
    if (wanted && state.jobs.get(wanted)?.state === "done" && !state.player) openPlayer(wanted);
  });
  events.addEventListener("job", (event) => updateJob(JSON.parse(event.data), true));
  events.onerror = () => showConnection(true);  // at each try while the server is away
}

// Says in #connection whether the server is reached: a status, which readers say at each
// change, so it is set only when that changes; the server back, "Connected again." for a while.
let connectionTimer = null;
function showConnection(lost) {
  const status = $("#connection");
  const back = status.textContent === LOST ? "Connected again." : status.textContent;
  const text = lost ? LOST : back;
  if (text === status.textContent) return;
  status.textContent = text;
  clearTimeout(connectionTimer);
  if (!lost) connectionTimer = setTimeout(() => { status.textContent = ""; }, BACK_MS);
}

// --- the player ------------------------------------------------------------------------------

class Player {
  constructor(job) {
    this.job = job;
    this.tracks = [];
    this.sources = [];
    this.playing = false;
    this.offset = 0;
    this.startedAt = 0;
    this.duration = 0;
    this.frame = null;
  }

  async load() {
    audioContext ??= new AudioContext();
    const names = [...this.job.targets, ORIGINAL];
    const decoded = await Promise.all(names.map(async (name) => {
      const url = name === ORIGINAL ? `/api/jobs/${this.job.id}/${ORIGINAL}.wav`
        : `/api/jobs/${this.job.id}/stems/${encodeURIComponent(name)}.wav`;
      const response = await fetch(url);
      if (!response.ok) throw new Error(await errorOf(response));
      return audioContext.decodeAudioData(await response.arrayBuffer());
    }));
    this.tracks = names.map((name, index) => {
      const gain = audioContext.createGain();
      gain.connect(audioContext.destination);
      const original = name === ORIGINAL;
      return { name, original, label: original ? "original mix" : name, buffer: decoded[index],
        gain, volume: 1, muted: original, solo: false };
    });
    this.duration = Math.max(...decoded.map((buffer) => buffer.duration));
  }

  get stems() {
    return this.tracks.filter((track) => !track.original);
  }

  position() {
    if (!this.playing) return this.offset;
    return Math.min(audioContext.currentTime - this.startedAt, this.duration);
  }

  toggle() {
    if (this.playing) this.pause(); else this.play();
    this.draw();
  }

  play() {
    if (this.offset >= this.duration) this.offset = 0;
    audioContext.resume();
    const when = audioContext.currentTime + 0.05;  // every source starts at the same instant
    this.sources = this.tracks.map((track) => {
      const source = audioContext.createBufferSource();
      source.buffer = track.buffer;
      source.connect(track.gain);
      source.start(when, this.offset);
      return source;
    });
    this.startedAt = when - this.offset;
    this.playing = true;
    this.tick();
  }

  pause() {
    this.offset = this.position();
    this.stopSources();
    this.playing = false;
  }

  stopSources() {
    for (const source of this.sources) {
      source.stop();
      source.disconnect();
    }
    this.sources = [];
  }

  seek(seconds) {
    const playing = this.playing;
    if (playing) this.pause();
    this.offset = Math.min(Math.max(seconds, 0), this.duration);
    if (playing) this.play();
    this.draw();
  }

  // A track's gain: its volume, or 0 when muted or when others are soloed.
  gainOf(track) {
    const soloing = this.tracks.some((other) => other.solo);
    return track.muted || (soloing && !track.solo) ? 0 : track.volume;
  }

  updateGains() {
    for (const track of this.tracks) {
      const value = this.gainOf(track);
      track.gain.gain.setValueAtTime(value, audioContext.currentTime);
      track.row.dataset.gain = String(value);
      track.row.classList.toggle("silent", value === 0);
      track.muteButton.setAttribute("aria-pressed", String(track.muted));
      track.soloButton.setAttribute("aria-pressed", String(track.solo));
    }
    $("#mix").disabled = this.tracks.every((track) => this.gainOf(track) === 0);
  }

  // A preset: which tracks sound, none soloed.
  preset(name) {
    for (const track of this.tracks) {
      track.solo = false;
      if (name === "original") track.muted = !track.original;
      else if (name === "karaoke") track.muted = track.original || track.name === "vocals";
      else if (name === "acappella") track.muted = track.name !== "vocals";
      else track.muted = track.original;
    }
    this.updateGains();
  }

  tick() {
    cancelAnimationFrame(this.frame);
    const step = () => {
      if (this.playing && this.position() >= this.duration) {
        this.pause();
        this.offset = this.duration;
      }
      this.draw();
      if (this.playing) this.frame = requestAnimationFrame(step);
    };
    this.frame = requestAnimationFrame(step);
  }

  draw() {
    const position = this.position();
    const text = `${clock(position)} / ${clock(this.duration)}`;
    $("#time").textContent = text;
    $("#seek").value = String(position);
    $("#seek").setAttribute("aria-valuetext", `${clock(position)} of ${clock(this.duration)}`);
    $("#play").textContent = this.playing ? "Pause" : "Play";
    for (const track of this.tracks) drawWaveform(track, position / this.duration);
  }

  close() {
    cancelAnimationFrame(this.frame);
    if (this.playing) this.stopSources();
    for (const track of this.tracks) track.gain.disconnect();
  }
}

// The peaks of a track, per pixel column: min and max over its channels, and the whole peak.
function peaks(buffer, columns) {
  const channels = [...Array(buffer.numberOfChannels).keys()].map((c) => buffer.getChannelData(c));
  const low = new Float32Array(columns);
  const high = new Float32Array(columns);
  const per = buffer.length / columns;
  let peak = 0;
  for (let column = 0; column < columns; column++) {
    let min = 0;
    let max = 0;
    const end = Math.min(buffer.length, Math.floor((column + 1) * per));
    for (const data of channels) {
      for (let i = Math.floor(column * per); i < end; i++) {
        if (data[i] < min) min = data[i];
        else if (data[i] > max) max = data[i];
      }
    }
    low[column] = min;
    high[column] = max;
    peak = Math.max(peak, max, -min);
  }
  return { low, high, peak };
}

// A waveform's colours: its stem's for the part played, grey for the rest, ink for the
// playhead; in forced colours the system's, as app.css gives them to the canvas.
function palette(track) {
  if (!FORCED.matches) {
    return { played: COLORS[track.name] || COLORS.mixture, unplayed: UNPLAYED, playhead: PLAYHEAD };
  }
  const style = getComputedStyle(track.canvas);
  const [played, unplayed, playhead] = ["--played", "--unplayed", "--playhead"]
    .map((name) => style.getPropertyValue(name));
  return { played, unplayed, playhead };
}

// A track's waveform, scaled to its own peak (a quiet stem fills its row too).
function drawWaveform(track, fraction) {
  const canvas = track.canvas;
  const width = Math.max(1, Math.round(canvas.clientWidth * devicePixelRatio));
  const height = Math.max(1, Math.round(canvas.clientHeight * devicePixelRatio));
  if (canvas.width !== width || canvas.height !== height || !track.peaks) {
    canvas.width = width;
    canvas.height = height;
    track.peaks = peaks(track.buffer, width);
  }
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, width, height);
  const middle = height / 2;
  const scale = track.peaks.peak > 0 ? (middle * 0.95) / track.peaks.peak : 0;
  const played = Math.round(fraction * width);
  const colors = palette(track);
  for (let x = 0; x < width; x++) {
    context.fillStyle = x < played ? colors.played : colors.unplayed;
    const top = middle - track.peaks.high[x] * scale;
    const bottom = middle - track.peaks.low[x] * scale;
    context.fillRect(x, top, 1, Math.max(1, bottom - top));
  }
  context.fillStyle = colors.playhead;
  context.fillRect(played, 0, Math.max(1, devicePixelRatio), height);
}

function trackRow(player, track) {
  const canvas = element("canvas", { role: "img", "aria-label": `${track.label} waveform` });
  canvas.onclick = (event) => {
    const box = canvas.getBoundingClientRect();
    player.seek(((event.clientX - box.left) / box.width) * player.duration);
  };
  const volume = element("input", { type: "range", min: "0", max: "1.5", step: "0.05",
    value: "1", "aria-label": `Volume of ${track.label}`, "aria-valuetext": "100 %" });
  const shown = element("output", { text: "100 %", "aria-hidden": "true" });
  volume.oninput = () => {
    track.volume = Number(volume.value);
    shown.textContent = `${Math.round(track.volume * 100)} %`;
    volume.setAttribute("aria-valuetext", shown.textContent);
    player.updateGains();
  };
  const toggle = (text, key) => {
    const button = element("button", { type: "button", class: key === "solo" ? "solo" : "muted",
      text, "aria-label": `${text} ${track.label}`, "aria-pressed": "false" });
    button.onclick = () => {
      track[key] = !track[key];
      player.updateGains();
    };
    return button;
  };
  track.muteButton = toggle("Mute", "muted");
  track.soloButton = toggle("Solo", "solo");
  const controls = element("span", { class: "controls" }, volume, shown, track.muteButton,
    track.soloButton);
  if (!track.original) {
    // shown "↓ vocals", named "Download vocals": the name holds the visible words
    track.download = element("a", { class: "button download", download: "" },
      element("span", { "aria-hidden": "true", text: "↓ " }),
      element("span", { class: "visually-hidden", text: "Download " }), track.label);
    controls.append(track.download);
  }
  track.row = element("div", {
    class: `track ${track.original ? "original" : "stem"}`, "data-stem": track.name,
    "data-duration": String(track.buffer.duration), "data-gain": "1",
  }, element("span", { class: "label", text: track.label }), canvas, controls);
  track.canvas = canvas;
  return track.row;
}

function updateDownloads() {
  const player = state.player;
  if (!player) return;
  const ext = $("#format").value;
  for (const stem of player.stems) {
    stem.download.href = `/api/jobs/${player.job.id}/stems/${encodeURIComponent(stem.name)}.${ext}`;
  }
  $("#zip").href = `/api/jobs/${player.job.id}/zip/${ext}`;
}

// "Download what you hear": the server sums the audible tracks at their gains.
async function downloadMix() {
  const player = state.player;
  if (!player) return;
  const ext = $("#format").value;
  const gains = new URLSearchParams();
  for (const track of player.tracks) {
    const gain = player.gainOf(track);
    if (gain > 0) gains.set(track.name, String(gain));
  }
  const note = $("#mix-note");
  note.textContent = "Mixing…";
  const response = await fetch(`/api/jobs/${player.job.id}/mix/${ext}?${gains}`);
  if (!response.ok) {
    note.textContent = `The mix could not be made: ${await errorOf(response)}`;
    return;
  }
  const disposition = response.headers.get("content-disposition") || "";
  const filename = /filename="([^"]+)"/.exec(disposition)?.[1] || `mix.${ext}`;
  const url = URL.createObjectURL(await response.blob());
  const link = element("a", { href: url, download: filename, hidden: "" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  const notice = response.headers.get("x-umx-notice");
  note.textContent = `Downloaded ${filename}` + (notice ? `: ${notice}.` : ".");
}

async function openPlayer(id, { focus = false } = {}) {
  const job = state.jobs.get(id);
  if (!job || job.state !== "done") return;
  closePlayer();
  const player = new Player(job);
  state.player = player;
  history.replaceState(null, "", `#job=${id}`);
  for (const other of state.jobs.values()) renderJob(other);
  $("#player").hidden = false;
  $("#player").dataset.state = "loading";
  $("#title").textContent = jobName(job);
  const notice = modelInfo(job.model)?.notice;
  $("#demo").hidden = !notice;
  $("#demo").replaceChildren(
    ...withCode(notice ? `A demonstration model separated this song: ${notice}.` : ""));
  $("#loading").textContent = "Loading the stems…";
  $("#mix-note").textContent = "";
  $("#tracks").replaceChildren();
  $("#play").disabled = $("#seek").disabled = true;
  // the presets and downloads act on loaded stems: shown once they are
  $(".presets").hidden = $(".downloads").hidden = $("#reload").hidden = true;
  if (focus) $("#title").focus();
  try {
    await player.load();
  } catch (error) {
    if (state.player === player) {
      $("#loading").textContent = `The stems could not be loaded: ${error.message}`;
      $("#reload").hidden = false;
      $("#player").dataset.state = "failed";
    }
    return;
  }
  if (state.player !== player) return;  // another song was opened meanwhile
  $("#loading").textContent = "";
  $(".presets").hidden = $(".downloads").hidden = false;
  $("#tracks").replaceChildren(...player.tracks.map((track) => trackRow(player, track)));
  const vocals = player.stems.some((stem) => stem.name === "vocals");
  const vocalPresets = document.querySelectorAll("[data-preset=karaoke], [data-preset=acappella]");
  for (const button of vocalPresets) button.hidden = !vocals;
  $("#seek").max = String(player.duration);
  $("#play").disabled = $("#seek").disabled = false;
  updateDownloads();
  player.updateGains();
  player.draw();
  $("#player").dataset.state = "ready";
}

// Closes the player; the focus, if it was in the player (its song deleted elsewhere, say), goes
// to the list of songs rather than to nowhere (the page's start, for a keyboard or a reader).
function closePlayer() {
  if (!state.player) return;
  const hadFocus = $("#player").contains(document.activeElement);
  state.player.close();
  state.player = null;
  $("#player").hidden = true;
  $("#player").dataset.state = "closed";
  history.replaceState(null, "", location.pathname);
  for (const job of state.jobs.values()) renderJob(job);
  if (hadFocus) $("#songs-title").focus();
}

// The position slider moves by SEEK_STEP seconds per arrow key, SEEK_PAGE per page key.
function seekKey(event) {
  const player = state.player;
  const steps = { ArrowLeft: -SEEK_STEP, ArrowDown: -SEEK_STEP, ArrowRight: SEEK_STEP,
    ArrowUp: SEEK_STEP, PageDown: -SEEK_PAGE, PageUp: SEEK_PAGE };
  if (!player) return;
  if (event.key in steps) player.seek(player.position() + steps[event.key]);
  else if (event.key === "Home") player.seek(0);
  else if (event.key === "End") player.seek(player.duration);
  else return;
  event.preventDefault();
}

function setUpPlayer() {
  $("#play").onclick = () => state.player?.toggle();
  $("#seek").oninput = () => state.player?.seek(Number($("#seek").value));
  $("#seek").onkeydown = seekKey;
  $("#format").onchange = updateDownloads;
  $("#mix").onclick = downloadMix;
  // the stems failed to load: load them again, the focus on the player's title (the button goes)
  $("#reload").onclick = () => state.player && openPlayer(state.player.job.id, { focus: true });
  for (const button of document.querySelectorAll("[data-preset]")) {
    button.onclick = () => state.player?.preset(button.dataset.preset);
  }
  addEventListener("resize", () => state.player?.draw());
  // drawn again in the colours of forced colours turned on or off, or of a dark or light theme
  for (const query of [FORCED, matchMedia("(prefers-color-scheme: dark)")]) {
    query.addEventListener("change", () => state.player?.draw());
  }
  // Space plays and pauses where it has no other use: the page, the player, its sliders
  addEventListener("keydown", (event) => {
    const target = event.target;
    const free = target === document.body || target.type === "range" ||
      (target.closest?.("#player") && !target.closest("button, a, select, summary"));
    if (event.key === " " && free && state.player && !$("#play").disabled) {
      event.preventDefault();
      state.player.toggle();
    }
  });
}

async function main() {
  await loadConfig();
  setUpDrop();
  setUpPlayer();
  listen();
  document.documentElement.dataset.state = "ready";  // for scripts and tests
}

main();
