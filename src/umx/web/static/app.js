// The page of `umx serve`: uploads, the list of songs (live through server-sent events) and a
// player of the stems in sync (Web Audio: one AudioBufferSourceNode and one GainNode per stem).
"use strict";

const $ = (selector) => document.querySelector(selector);
const COLORS = {
  vocals: "#d9480f", drums: "#2d6cdf", bass: "#7048e8", other: "#2b8a3e",
  accompaniment: "#2b8a3e",
};
const state = { config: null, jobs: new Map(), uploads: new Map(), ours: new Set(), player: null };
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

async function errorOf(response) {
  try {
    return (await response.json()).error || response.statusText;
  } catch {
    return `the server answered ${response.status} ${response.statusText}`;
  }
}

// --- configuration ---------------------------------------------------------------------------

async function loadConfig() {
  const response = await fetch("/api/config");
  state.config = await response.json();
  const model = $("#model");
  for (const info of state.config.models) {
    const note = info.status === "bundled" || info.status === "cached" ? info.status
      : info.status === "directory" ? "folder" : "downloads on first use";
    model.append(element("option", { value: info.name, text: `${info.name} (${note})` }));
  }
  model.value = state.config.default_model;
  for (const [value, text] of Object.entries(state.config.stems)) {
    $("#stems").append(element("option", { value, text }));
  }
  for (const ext of state.config.formats) $("#format").append(element("option", { text: ext }));
  $("#limit").textContent = Math.round(state.config.max_upload_bytes / 2 ** 20);
  $("#version").textContent = `umx ${state.config.version}`;
}

// --- uploads ---------------------------------------------------------------------------------

let uploadCount = 0;

function upload(file) {
  const key = `upload-${++uploadCount}`;
  const entry = { key, name: file.name, progress: 0, error: null };
  state.uploads.set(key, entry);
  if (file.size > state.config.max_upload_bytes) {
    entry.error = `${file.name} is larger than the upload limit of ` +
      `${Math.round(state.config.max_upload_bytes / 2 ** 20)} MB`;
    renderUpload(entry);
    return;
  }
  renderUpload(entry);
  const query = new URLSearchParams({ name: file.name, model: $("#model").value,
    stems: $("#stems").value });
  const request = new XMLHttpRequest();
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
      document.getElementById(key)?.remove();
      state.ours.add(body.id);
      // the events may have told more already: this answer is older than they are
      if (!state.jobs.has(body.id)) updateJob(body);
      if (state.jobs.get(body.id).state === "done" && !state.player) openPlayer(body.id);
    } else {
      entry.error = body?.error || `the server answered ${request.status}`;
      renderUpload(entry);
    }
  };
  request.onerror = () => {
    entry.error = `${file.name} could not be sent: the connection to the server was lost`;
    renderUpload(entry);
  };
  request.send(file);
}

function renderUpload(entry) {
  let item = document.getElementById(entry.key);
  if (!item) {
    item = element("li", { id: entry.key, class: "upload" });
    $("#jobs").prepend(item);
  }
  const dismiss = element("button", { type: "button", text: "Dismiss" });
  dismiss.onclick = () => { state.uploads.delete(entry.key); item.remove(); renderEmpty(); };
  item.className = entry.error ? "upload state-failed" : "upload";
  const status = entry.error ? "refused" : `uploading ${Math.round(entry.progress * 100)} %`;
  item.replaceChildren(
    element("span", { class: "name", text: entry.name }),
    element("span", { class: "actions" }, ...(entry.error ? [dismiss] : [])),
    element("span", { class: "meta" }, element("span", { class: "state", text: status })),
    entry.error
      ? element("p", { class: "error", text: entry.error })
      : element("progress", { max: "1", value: String(entry.progress) }),
  );
  renderEmpty();
}

function setUpDrop() {
  const drop = $("#drop");
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

function updateJob(job) {
  if (job.state === "deleted") {
    state.jobs.delete(job.id);
    document.getElementById(`job-${job.id}`)?.remove();
    if (state.player?.job.id === job.id) closePlayer();
  } else {
    const before = state.jobs.get(job.id);
    state.jobs.set(job.id, job);
    renderJob(job);
    const finished = job.state === "done" && before?.state !== "done";
    if (finished && state.ours.has(job.id) && !state.player) openPlayer(job.id);
  }
  renderEmpty();
}

function renderJob(job) {
  const id = `job-${job.id}`;
  let item = document.getElementById(id);
  if (!item) {
    item = element("li", { id });
    // the newest first: after the oldest of the songs newer than this one that are shown
    const newer = [...state.jobs.values()].filter((other) => other.created > job.created)
      .sort((a, b) => a.created - b.created)
      .map((other) => document.getElementById(`job-${other.id}`)).filter(Boolean);
    if (newer.length) newer[0].after(item); else $("#jobs").prepend(item);
  }
  item.className = `state-${job.state}`;
  item.classList.toggle("current", state.player?.job.id === job.id);
  const listen = element("button", { type: "button", class: "listen", text: "Listen" });
  listen.disabled = job.state !== "done";
  listen.onclick = () => openPlayer(job.id);
  const remove = element("button", { type: "button", class: "delete", text: "Delete" });
  remove.onclick = () => deleteJob(job);
  const stems = state.config.stems[job.stems] || job.stems;
  let status = job.state;
  if (job.state === "running") status = `separating ${Math.round(job.progress * 100)} %`;
  if (job.state === "done") status = `done in ${job.seconds.toFixed(1)} s`;
  const meta = element("span", { class: "meta" },
    element("span", { class: "state", text: status }),
    ` · ${job.model} · ${stems}${job.duration ? ` · ${clock(job.duration)}` : ""}`);
  const parts = [element("span", { class: "name", text: job.name }),
    element("span", { class: "actions" }, listen, remove), meta];
  if (job.state === "queued" || job.state === "running") {
    parts.push(element("progress", { max: "1", value: String(job.progress) }));
  }
  if (job.error) parts.push(element("p", { class: "error", text: job.error }));
  item.replaceChildren(...parts);
}

function renderEmpty() {
  $("#empty").hidden = $("#jobs").children.length > 0;
}

async function deleteJob(job) {
  if (!confirm(`Delete ${job.name} and its stems?`)) return;
  const response = await fetch(`/api/jobs/${job.id}`, { method: "DELETE" });
  if (response.ok || response.status === 404) updateJob({ id: job.id, state: "deleted" });
  else alert(await errorOf(response));
}

function listen() {
  const events = new EventSource("/api/events");
  events.addEventListener("jobs", (event) => {
    const jobs = JSON.parse(event.data);
    const ids = new Set(jobs.map((job) => job.id));
    for (const id of state.jobs.keys()) if (!ids.has(id)) updateJob({ id, state: "deleted" });
    for (const job of jobs.reverse()) updateJob(job);
    $("#connection").textContent = "";
    const wanted = new URLSearchParams(location.hash.slice(1)).get("job");
    if (wanted && state.jobs.get(wanted)?.state === "done" && !state.player) openPlayer(wanted);
  });
  events.addEventListener("job", (event) => updateJob(JSON.parse(event.data)));
  events.onerror = () => {
    $("#connection").textContent = "The connection to the server was lost; retrying…";
  };
}

// --- the player ------------------------------------------------------------------------------

class Player {
  constructor(job) {
    this.job = job;
    this.stems = [];
    this.sources = [];
    this.playing = false;
    this.offset = 0;
    this.startedAt = 0;
    this.duration = 0;
    this.frame = null;
  }

  async load() {
    audioContext ??= new AudioContext();
    const decoded = await Promise.all(this.job.targets.map(async (name) => {
      const response = await fetch(`/api/jobs/${this.job.id}/stems/${encodeURIComponent(name)}.wav`);
      if (!response.ok) throw new Error(await errorOf(response));
      return audioContext.decodeAudioData(await response.arrayBuffer());
    }));
    this.stems = this.job.targets.map((name, index) => {
      const gain = audioContext.createGain();
      gain.connect(audioContext.destination);
      return { name, buffer: decoded[index], gain, volume: 1, muted: false, solo: false };
    });
    this.duration = Math.max(...decoded.map((buffer) => buffer.duration));
  }

  position() {
    if (!this.playing) return this.offset;
    return Math.min(audioContext.currentTime - this.startedAt, this.duration);
  }

  play() {
    if (this.offset >= this.duration) this.offset = 0;
    audioContext.resume();
    const when = audioContext.currentTime + 0.05;  // every source starts at the same instant
    this.sources = this.stems.map((stem) => {
      const source = audioContext.createBufferSource();
      source.buffer = stem.buffer;
      source.connect(stem.gain);
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

  // The gain of each stem: its volume, or 0 when muted or when others are soloed.
  updateGains() {
    const soloing = this.stems.some((stem) => stem.solo);
    for (const stem of this.stems) {
      const value = stem.muted || (soloing && !stem.solo) ? 0 : stem.volume;
      stem.gain.gain.setValueAtTime(value, audioContext.currentTime);
      stem.row.dataset.gain = String(value);
      stem.row.classList.toggle("silent", value === 0);
    }
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
    $("#time").textContent = `${clock(position)} / ${clock(this.duration)}`;
    $("#seek").value = String(position);
    $("#play").textContent = this.playing ? "Pause" : "Play";
    for (const stem of this.stems) drawWaveform(stem, position / this.duration);
  }

  close() {
    cancelAnimationFrame(this.frame);
    if (this.playing) this.stopSources();
    for (const stem of this.stems) stem.gain.disconnect();
  }
}

// The peaks of a stem, per pixel column: min and max over its channels.
function peaks(buffer, columns) {
  const channels = [...Array(buffer.numberOfChannels).keys()].map((c) => buffer.getChannelData(c));
  const low = new Float32Array(columns);
  const high = new Float32Array(columns);
  const per = buffer.length / columns;
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
  }
  return { low, high };
}

function drawWaveform(stem, fraction) {
  const canvas = stem.canvas;
  const width = Math.max(1, Math.round(canvas.clientWidth * devicePixelRatio));
  const height = Math.max(1, Math.round(canvas.clientHeight * devicePixelRatio));
  if (canvas.width !== width || canvas.height !== height || !stem.peaks) {
    canvas.width = width;
    canvas.height = height;
    stem.peaks = peaks(stem.buffer, width);
  }
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, width, height);
  const middle = height / 2;
  const played = Math.round(fraction * width);
  for (let x = 0; x < width; x++) {
    context.fillStyle = x < played ? COLORS[stem.name] || "#495057" : "#adb5bd";
    const top = middle - stem.peaks.high[x] * middle;
    const bottom = middle - stem.peaks.low[x] * middle;
    context.fillRect(x, top, 1, Math.max(1, bottom - top));
  }
  context.fillStyle = "#1d1d1f";
  context.fillRect(played, 0, Math.max(1, devicePixelRatio), height);
}

function stemRow(player, stem) {
  const canvas = element("canvas", { "aria-label": `${stem.name} waveform` });
  canvas.onclick = (event) => {
    const box = canvas.getBoundingClientRect();
    player.seek(((event.clientX - box.left) / box.width) * player.duration);
  };
  const volume = element("input", { type: "range", min: "0", max: "1.5", step: "0.01",
    value: "1", "aria-label": `${stem.name} volume` });
  volume.oninput = () => { stem.volume = Number(volume.value); player.updateGains(); };
  const toggle = (label, key, title) => {
    const button = element("button", { type: "button", class: key, title, text: label,
      "aria-pressed": "false" });
    button.onclick = () => {
      stem[key] = !stem[key];
      button.setAttribute("aria-pressed", String(stem[key]));
      player.updateGains();
    };
    return button;
  };
  const download = element("a", { class: "button download", text: "↓", title: `Download ${stem.name}` });
  stem.row = element("div", { class: "stem", "data-stem": stem.name,
    "data-duration": String(stem.buffer.duration), "data-gain": "1" },
    element("span", { class: "label", text: stem.name }), canvas,
    element("span", { class: "controls" }, volume, toggle("M", "muted", "Mute"),
      toggle("S", "solo", "Solo"), download));
  stem.canvas = canvas;
  stem.download = download;
  return stem.row;
}

function updateDownloads() {
  const player = state.player;
  if (!player) return;
  const ext = $("#format").value;
  for (const stem of player.stems) {
    stem.download.href = `/api/jobs/${player.job.id}/stems/${encodeURIComponent(stem.name)}.${ext}`;
    stem.download.setAttribute("download", "");
  }
  $("#zip").href = `/api/jobs/${player.job.id}/zip/${ext}`;
}

async function openPlayer(id) {
  const job = state.jobs.get(id);
  if (!job || job.state !== "done") return;
  closePlayer();
  const player = new Player(job);
  state.player = player;
  history.replaceState(null, "", `#job=${id}`);
  for (const other of state.jobs.values()) renderJob(other);
  $("#player").hidden = false;
  $("#player").dataset.state = "loading";
  $("#title").textContent = job.name;
  $("#loading").textContent = "Loading the stems…";
  $("#stems-list").replaceChildren();
  $("#play").disabled = $("#seek").disabled = true;
  try {
    await player.load();
  } catch (error) {
    if (state.player === player) {
      $("#loading").textContent = `The stems could not be loaded: ${error.message}`;
      $("#player").dataset.state = "failed";
    }
    return;
  }
  if (state.player !== player) return;  // another song was opened meanwhile
  $("#loading").textContent = "";
  $("#stems-list").replaceChildren(...player.stems.map((stem) => stemRow(player, stem)));
  $("#seek").max = String(player.duration);
  $("#play").disabled = $("#seek").disabled = false;
  updateDownloads();
  player.updateGains();
  player.draw();
  $("#player").dataset.state = "ready";
}

function closePlayer() {
  if (!state.player) return;
  state.player.close();
  state.player = null;
  $("#player").hidden = true;
  $("#player").dataset.state = "closed";
  history.replaceState(null, "", location.pathname);
  for (const job of state.jobs.values()) renderJob(job);
}

function setUpPlayer() {
  $("#play").onclick = () => {
    const player = state.player;
    if (!player) return;
    if (player.playing) player.pause(); else player.play();
    player.draw();
  };
  $("#seek").oninput = () => state.player?.seek(Number($("#seek").value));
  $("#format").onchange = updateDownloads;
  addEventListener("resize", () => state.player?.draw());
  addEventListener("keydown", (event) => {
    if (event.code === "Space" && event.target === document.body && state.player) {
      event.preventDefault();
      $("#play").click();
    }
  });
}

async function main() {
  await loadConfig();
  setUpDrop();
  setUpPlayer();
  listen();
}

main();
