// Backdrop's web page: plain JavaScript on the service's own JSON API (no build step, no libraries).
// The preview runs on the workers: this page only takes the first frame of the chosen video
// (as the browser shows it, upright) and sends it to POST /previews with the background options.

const $ = (id) => document.getElementById(id);
const KEY_STORE = "backdrop.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const state = {
  limits: null,
  video: null, // the chosen File
  videoUrl: null, // its object URL (the "before" side of the comparison)
  frame: null, // JPEG Blob of its first frame, or null when the browser cannot decode it
  bgFrame: null, // still picture of an uploaded background (first frame of a video), for previews
  previewBusy: false, // a preview is under way
  previewAgain: false, // something changed meanwhile: preview again when it ends
  previewTimer: null,
  xhr: null, // the upload under way
  job: null, // the job being followed
  samples: [], // [ms, frames_done] while running, for the time left
  urls: [], // object URLs to revoke when replaced
};

// ---------------------------------------------------------------- API helpers
function apiKey() { return $("api-key").value.trim(); }
// With keys on and none entered, the page makes no call of its own that would only be refused.
function keyMissing() { return state.limits && state.limits.auth === "key" && !apiKey(); }
function authHeaders() { const k = apiKey(); return k ? { Authorization: `Bearer ${k}` } : {}; }

// A readable message from a problem+json answer (title: detail), or from whatever else came back.
function problemText(status, text, contentType) {
  if ((contentType || "").includes("json")) {
    try {
      const p = JSON.parse(text);
      if (p && (p.title || p.detail)) return [p.title, p.detail].filter(Boolean).join(": ");
    } catch (_) { /* not JSON after all */ }
  }
  if (status === 0) return "The service could not be reached (network error).";
  return `The service answered HTTP ${status}.`;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  let resp;
  try {
    resp = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch (e) {
    throw new ApiError(0, problemText(0));
  }
  if (!resp.ok) {
    throw new ApiError(resp.status, problemText(resp.status, await resp.text(), resp.headers.get("content-type")));
  }
  return resp;
}
async function apiJson(path, options) { return (await api(path, options)).json(); }

function sameOrigin(url) { return new URL(url, location.href).origin === location.origin; }

// A URL the page can put in src/href: presigned (other origin) URLs as they are; the API's own
// URLs fetched with the key into a blob: URL when a key is needed.
async function usableUrl(url) {
  if (!sameOrigin(url) || !apiKey()) return url;
  const blob = await (await api(url)).blob();
  return keepUrl(URL.createObjectURL(blob));
}
function keepUrl(u) { state.urls.push(u); return u; }

// ---------------------------------------------------------------- messages
function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}
function clearError() { showError(""); }

function fmtBytes(n) {
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${units[i]}`;
}
function fmtSeconds(s) {
  if (!isFinite(s)) return "";
  if (s < 60) return `${Math.max(0, s).toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

// ---------------------------------------------------------------- limits and key
async function loadLimits() {
  try {
    const l = await apiJson("/limits");
    state.limits = l;
    $("limits").textContent =
      `Up to ${fmtBytes(l.max_upload_bytes)}, ${fmtSeconds(l.max_duration_s)} long, ` +
      `${l.max_width}×${l.max_height} pixels (at most ${(l.max_pixels / 1e6).toFixed(1)} megapixels a frame) ` +
      `and ${l.max_frames} frames.`;
    const model = $("model");
    model.replaceChildren(...l.models.map((m) => new Option(m, m, m === l.default_model, m === l.default_model)));
    $("api-key-hint").textContent = l.auth === "open"
      ? "This server runs in open mode: no key is needed (it answers this machine only)."
      : "This server needs an API key: it is kept in this tab only (sessionStorage) and sent as a Bearer token.";
  } catch (e) {
    $("limits").textContent = "The limits could not be loaded.";
    showError(e.message);
  }
}

function initKey() {
  const input = $("api-key");
  input.value = sessionStorage.getItem(KEY_STORE) || "";
  input.addEventListener("input", () => sessionStorage.setItem(KEY_STORE, apiKey()));
  input.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORE, apiKey());
    clearError();
    refreshJobs();
    schedulePreview();
  });
}

// ---------------------------------------------------------------- frames from files
// The first frame of a video as the browser displays it (rotation applied), as a JPEG Blob.
function videoFrame(file) {
  return new Promise((resolve, reject) => {
    const v = document.createElement("video");
    const url = URL.createObjectURL(file);
    const done = (fn, arg) => { v.removeAttribute("src"); v.load(); URL.revokeObjectURL(url); fn(arg); };
    v.muted = true;
    v.playsInline = true;
    v.preload = "auto";
    v.onerror = () => done(reject, new Error("this browser cannot decode the video"));
    v.onloadeddata = () => {
      if (!v.videoWidth) { done(reject, new Error("no picture")); return; }
      const canvas = document.createElement("canvas");
      canvas.width = v.videoWidth;
      canvas.height = v.videoHeight;
      canvas.getContext("2d").drawImage(v, 0, 0, canvas.width, canvas.height);
      canvas.toBlob((b) => (b ? done(resolve, b) : done(reject, new Error("no frame"))), "image/jpeg", 0.92);
    };
    v.src = url;
  });
}

// A still picture (an image, or the first frame of a video) as a JPEG Blob, at most 2048 px long;
// a picture this browser cannot decode (HEIC outside Safari) goes as it is, for the server to read.
async function stillPicture(file) {
  if (file.type.startsWith("video/")) return videoFrame(file);
  let bmp;
  try {
    bmp = await createImageBitmap(file);
  } catch {
    return file;
  }
  const scale = Math.min(1, 2048 / Math.max(bmp.width, bmp.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bmp.width * scale));
  canvas.height = Math.max(1, Math.round(bmp.height * scale));
  canvas.getContext("2d").drawImage(bmp, 0, 0, canvas.width, canvas.height);
  bmp.close();
  return new Promise((resolve, reject) =>
    canvas.toBlob((b) => (b ? resolve(b) : reject(new Error("no picture"))), "image/jpeg", 0.92));
}

async function onVideoChosen(file) {
  clearError();
  state.video = file;
  state.frame = null;
  if (state.videoUrl) URL.revokeObjectURL(state.videoUrl);
  state.videoUrl = file ? URL.createObjectURL(file) : null;
  $("preview").hidden = true;
  if (!file) { $("video-info").textContent = ""; return; }
  const l = state.limits;
  let info = `${file.name}: ${fmtBytes(file.size)}`;
  if (l && file.size > l.max_upload_bytes) {
    showError(`This file is ${fmtBytes(file.size)}; the limit is ${fmtBytes(l.max_upload_bytes)}.`);
  }
  $("video-info").textContent = info;
  try {
    state.frame = await videoFrame(file);
    const meta = await videoMeta(state.videoUrl);
    info += `, ${meta.width}×${meta.height}, ${fmtSeconds(meta.duration)}`;
    if (l && meta.duration > l.max_duration_s) info += ` — longer than the ${fmtSeconds(l.max_duration_s)} limit`;
    $("video-info").textContent = info;
    schedulePreview(0);
  } catch (_) {
    $("preview-state").textContent =
      "This browser cannot show this file, so there is no preview; Backdrop checks it when you submit.";
  }
}

function videoMeta(url) {
  return new Promise((resolve) => {
    const v = document.createElement("video");
    v.preload = "metadata";
    v.muted = true;
    v.onloadedmetadata = () => { resolve({ width: v.videoWidth, height: v.videoHeight, duration: v.duration }); v.removeAttribute("src"); v.load(); };
    v.onerror = () => resolve({ width: 0, height: 0, duration: NaN });
    v.src = url;
  });
}

// ---------------------------------------------------------------- background and options
function bgMode() { return document.querySelector('input[name="bg"]:checked').value; }

async function builtinBlob() {
  const name = document.querySelector('input[name="builtin"]:checked').value;
  const blob = await (await api(`/static/backgrounds/${name}.jpg`)).blob();
  return new File([blob], `${name}.jpg`, { type: "image/jpeg" });
}

// The background and option fields of POST /jobs and POST /previews; `forPreview` sends a still
// picture of an uploaded background (a video's first frame) instead of the whole file.
async function fillOptions(form, forPreview) {
  const mode = bgMode();
  if (mode === "color") form.append("background_color", $("bg-color").value);
  else if (mode === "blur") {
    form.append("background_blur", "true");
    form.append("background_blur_strength", $("blur-strength").value);
  }
  else if (mode === "builtin") form.append("background", await builtinBlob());
  else if (mode === "file") {
    const f = $("bg-file").files[0];
    if (!f) throw new ApiError(0, "Choose a background image or video, or another kind of background.");
    if (forPreview) {
      if (!state.bgFrame) state.bgFrame = await stillPicture(f);
      form.append("background", state.bgFrame, state.bgFrame === f ? f.name : "background.jpg");
    } else form.append("background", f, f.name);
  }
  form.append("model", $("model").value || (state.limits && state.limits.default_model) || "rvm");
  form.append("composite", $("composite").value);
  form.append("output_format", $("format").value);
  form.append("harmonize", $("harmonize").value);
}

function syncControls() {
  const mode = bgMode();
  document.querySelectorAll(".bg-pane").forEach((p) => { p.hidden = p.dataset.for !== mode; });
  const format = $("format");
  const alphaFormats = ["webm", "mov"];
  if (mode === "transparent" && !alphaFormats.includes(format.value)) format.value = "webm";
  if (mode !== "transparent" && alphaFormats.includes(format.value)) format.value = "mp4";
  const scene = format.value === "mp4";
  $("harmonize").disabled = !scene;
  if (!scene) $("harmonize").value = "0";
  $("harmonize-value").textContent = $("harmonize").value;
}

function onFormatChanged() {
  const alpha = ["webm", "mov"].includes($("format").value);
  const mode = bgMode();
  if (alpha && mode !== "transparent") document.querySelector('input[name="bg"][value="transparent"]').checked = true;
  if (!alpha && mode === "transparent") document.querySelector('input[name="bg"][value="color"]').checked = true;
  syncControls();
}

// ---------------------------------------------------------------- preview
function schedulePreview(delay = 350) {
  clearTimeout(state.previewTimer);
  if (!state.frame) return;
  if (keyMissing()) { $("preview-state").textContent = "Enter your API key (above) to see a preview."; return; }
  state.previewTimer = setTimeout(runPreview, delay);
}

// One preview at a time: a change while one is under way asks for another when it ends (the
// preview queue never fills with previews nobody will see).
async function runPreview() {
  if (state.previewBusy) { state.previewAgain = true; return; }
  state.previewBusy = true;
  try {
    do {
      state.previewAgain = false;
      await previewOnce();
    } while (state.previewAgain);
  } finally {
    state.previewBusy = false;
  }
}

async function previewOnce() {
  const stale = () => state.previewAgain; // a newer choice makes this answer not worth showing
  const stateEl = $("preview-state");
  stateEl.textContent = "Rendering the preview on the workers…";
  const t0 = performance.now();
  try {
    const form = new FormData();
    form.append("frame", state.frame, "frame.jpg");
    await fillOptions(form, true);
    let p = await apiJson("/previews", { method: "POST", body: form });
    const deadline = Date.now() + 60000;
    while (!["succeeded", "failed"].includes(p.status)) {
      if (stale()) return;
      if (Date.now() > deadline) throw new ApiError(0, "The preview is taking too long; the workers may be busy.");
      await sleep(150);
      p = await apiJson(`/previews/${p.id}`);
    }
    if (stale()) return;
    if (p.status === "failed") throw new ApiError(0, `Preview failed: ${p.error.message}`);
    const [cut, comp] = await Promise.all([usableUrl(p.cutout_url), p.composite_url ? usableUrl(p.composite_url) : null]);
    if (stale()) return;
    await Promise.all([loadImg($("preview-cutout"), cut), comp ? loadImg($("preview-composite"), comp) : null]);
    $("preview-composite-fig").hidden = !comp;
    $("preview").hidden = false;
    $("preview").dataset.previewId = p.id;
    stateEl.textContent = `Preview ready in ${fmtSeconds((performance.now() - t0) / 1000)}.`;
  } catch (e) {
    if (stale()) return;
    stateEl.textContent = "No preview.";
    showError(e.message);
  }
}

function loadImg(img, src) {
  return new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; img.src = src; });
}
function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

// ---------------------------------------------------------------- submit, follow, cancel
function setStatus(text) { $("status").textContent = text; }

async function submit(ev) {
  ev.preventDefault();
  clearError();
  if (!state.video) { showError("Choose a video first."); $("video").focus(); return; }
  const form = new FormData();
  form.append("video", state.video, state.video.name);
  try {
    await fillOptions(form, false);
  } catch (e) { showError(e.message); return; }
  $("result").hidden = true;
  $("progress").value = 0;
  $("submit").disabled = true;
  $("cancel").hidden = false;
  $("upload").hidden = false;
  setStatus("uploading 0%");
  const xhr = new XMLHttpRequest();
  state.xhr = xhr;
  xhr.open("POST", "/jobs");
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => {
    if (!e.lengthComputable) return;
    const pct = Math.round((100 * e.loaded) / e.total);
    $("upload-progress").value = pct;
    $("upload-text").textContent = `${pct}% of ${fmtBytes(e.total)}`;
    setStatus(`uploading ${pct}%`);
  };
  xhr.onload = () => {
    state.xhr = null;
    if (xhr.status === 202) {
      const job = JSON.parse(xhr.responseText);
      $("upload-progress").value = 100;
      $("upload-text").textContent = "100%";
      follow(job);
      refreshJobs();
    } else {
      const msg = problemText(xhr.status, xhr.responseText, xhr.getResponseHeader("content-type"));
      showError(msg);
      setStatus(`refused: ${msg}`);
      endRun();
    }
  };
  xhr.onerror = () => { state.xhr = null; const m = problemText(0); showError(m); setStatus(`refused: ${m}`); endRun(); };
  xhr.onabort = () => { state.xhr = null; setStatus("upload canceled"); endRun(); };
  xhr.send(form);
}

function endRun() {
  $("submit").disabled = false;
  $("cancel").hidden = true;
}

async function cancel() {
  if (state.xhr) { state.xhr.abort(); return; }
  const job = state.job;
  if (!job) return;
  $("cancel").disabled = true;
  try {
    await api(`/jobs/${job.id}`, { method: "DELETE" });
    setStatus(`canceled: job ${job.id.slice(0, 8)} was canceled`);
  } catch (e) { showError(e.message); }
  $("cancel").disabled = false;
}

async function follow(job) {
  const id = job.id;
  state.job = job;
  state.samples = [];
  while (state.job && state.job.id === id) {
    // the result first: once the status says "succeeded", the player and the download link are ready
    if (job.status === "succeeded") await showResult(job).catch((e) => showError(e.message));
    showJob(job);
    if (TERMINAL.has(job.status)) break;
    await sleep(500);
    try {
      job = await apiJson(`/jobs/${id}`);
      if (state.job && state.job.id === id) state.job = job;
    } catch (e) {
      if (e.status === 404) { setStatus(`canceled: job ${id.slice(0, 8)} is gone`); break; }
      showError(e.message);
      await sleep(1500);
    }
  }
  if (!state.job || state.job.id !== id) return; // another job is followed now
  endRun();
  refreshJobs();
}

function showJob(job) {
  const p = job.progress;
  $("progress").value = job.status === "succeeded" ? 100 : p.percent;
  let text = `${job.status}`;
  if (job.status === "running" || job.status === "queued") {
    text += ` · ${p.frames_done} of ${p.frames_total} frames · ${p.percent.toFixed(0)}%`;
    if (job.status === "running" && p.frames_done > 0) {
      state.samples.push([Date.now(), p.frames_done]);
      const [t0, d0] = state.samples[0];
      const rate = (p.frames_done - d0) / ((Date.now() - t0) / 1000);
      if (rate > 0) text += ` · about ${fmtSeconds((p.frames_total - p.frames_done) / rate)} left`;
    }
  } else if (job.status === "failed" && job.error) {
    text += `: ${job.error.message} (${job.error.code})`;
    showError(`The job failed: ${job.error.message}`);
  } else if (job.status === "succeeded") {
    text += ` · ${p.frames_total} frames`;
  }
  setStatus(`${text} — job ${job.id.slice(0, 8)}`);
}

async function showResult(job) {
  const r = job.result;
  const url = await usableUrl(r.url || `/jobs/${job.id}/result`);
  const a = $("download");
  a.href = url;
  a.download = `${((state.video && state.video.name) || "video").replace(/\.[^.]+$/, "")}-backdrop.${r.format === "mov" ? "mov" : r.format === "webm" ? "webm" : "mp4"}`;
  const video = $("result-video");
  video.src = url;
  $("compare").classList.toggle("alpha", ["webm", "mov"].includes(r.format));
  const before = $("before-video");
  before.src = state.videoUrl || "";
  $("split").value = 0;
  $("compare").style.setProperty("--split", "0%");
  const took = (new Date(job.finished_at) - new Date(job.created_at)) / 1000;
  const work = job.started_at ? (new Date(job.finished_at) - new Date(job.started_at)) / 1000 : took;
  $("result-took").textContent =
    `Done in ${fmtSeconds(took)} (${fmtSeconds(work)} of processing): ${r.frames} frames, ${r.width}×${r.height}, ${fmtBytes(r.size)}.`;
  $("result-note").textContent = r.format === "mov"
    ? "Browsers do not play ProRes: download the file to see it."
    : "Drag the slider to show your original on the left.";
  $("result").hidden = false;
}

function syncBefore() {
  const v = $("result-video"), b = $("before-video");
  if (!b.src) return;
  if (Math.abs(b.currentTime - v.currentTime) > 0.15) b.currentTime = v.currentTime;
  if (v.paused !== b.paused) (v.paused ? b.pause() : b.play().catch(() => {}));
}

// ---------------------------------------------------------------- recent jobs
async function refreshJobs() {
  const tbody = document.querySelector("#jobs tbody");
  if (keyMissing()) {
    tbody.replaceChildren();
    $("jobs-empty").textContent = "Enter your API key (above) to see your jobs.";
    $("jobs-empty").hidden = false;
    return;
  }
  let page;
  try {
    page = await apiJson("/jobs?limit=20");
  } catch (e) {
    tbody.replaceChildren();
    $("jobs-empty").textContent = `The jobs could not be listed: ${e.message}`;
    $("jobs-empty").hidden = false;
    return;
  }
  $("jobs-empty").textContent = "No jobs yet.";
  $("jobs-empty").hidden = page.data.length > 0;
  tbody.replaceChildren(...page.data.map(jobRow));
}

function bgLabel(bg) {
  if (!bg) return "";
  if (bg.kind === "color") return `colour ${bg.value}`;
  if (bg.kind === "file") return "picture or video";
  return bg.kind === "none" ? "no background" : bg.kind;
}

function jobRow(job) {
  const tr = document.createElement("tr");
  tr.dataset.jobId = job.id;
  const cells = [
    new Date(job.created_at).toLocaleString(),
    `${job.id.slice(0, 8)} · ${job.options.output_format} · ${bgLabel(job.background)}`,
    job.status + (job.status === "running" ? ` ${job.progress.percent.toFixed(0)}%` : "") +
      (job.error ? ` (${job.error.code})` : ""),
  ].map((t) => { const td = document.createElement("td"); td.textContent = t; return td; });
  cells[2].dataset.testid = "job-status";
  const actions = document.createElement("td");
  if (job.status === "succeeded") {
    const a = document.createElement("a");
    // "Save" and "Stop" here, "Download" and "Cancel" for the job on the page: every name is unique
    a.textContent = "Save";
    a.href = job.result.url || `/jobs/${job.id}/result`;
    a.download = "";
    a.setAttribute("aria-label", `Save the result of job ${cells[1].textContent}`);
    a.addEventListener("click", async (ev) => {
      if (!apiKey() || !sameOrigin(a.href) || a.href.startsWith("blob:")) return;
      ev.preventDefault(); // fetch with the key, then download the blob
      try { a.href = await usableUrl(a.href); a.click(); } catch (e) { showError(e.message); }
    });
    actions.append(a);
  }
  const del = document.createElement("button");
  del.type = "button";
  del.textContent = TERMINAL.has(job.status) ? "Delete" : "Stop";
  del.setAttribute("aria-label", `${del.textContent} job ${cells[1].textContent}`);
  del.addEventListener("click", async () => {
    try { await api(`/jobs/${job.id}`, { method: "DELETE" }); } catch (e) { showError(e.message); }
    refreshJobs();
  });
  actions.append(del);
  tr.append(...cells, actions);
  return tr;
}

// ---------------------------------------------------------------- wiring
function init() {
  initKey();
  loadLimits().then(() => { syncControls(); refreshJobs(); });
  const video = $("video");
  video.addEventListener("change", () => onVideoChosen(video.files[0] || null));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) { video.files = e.dataTransfer.files; onVideoChosen(video.files[0]); }
  });
  document.querySelectorAll('input[name="bg"], input[name="builtin"]').forEach((r) =>
    r.addEventListener("change", () => { syncControls(); schedulePreview(); }));
  $("bg-color").addEventListener("input", () => schedulePreview());
  $("bg-file").addEventListener("change", () => { state.bgFrame = null; schedulePreview(0); });
  $("format").addEventListener("change", () => { onFormatChanged(); schedulePreview(); });
  ["model", "composite"].forEach((id) => $(id).addEventListener("change", () => schedulePreview()));
  $("harmonize").addEventListener("input", () => { $("harmonize-value").textContent = $("harmonize").value; schedulePreview(); });
  $("blur-strength").addEventListener("input", () => { $("blur-strength-value").textContent = $("blur-strength").value; schedulePreview(); });
  $("form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("refresh-jobs").addEventListener("click", refreshJobs);
  $("split").addEventListener("input", () => $("compare").style.setProperty("--split", `${$("split").value}%`));
  const rv = $("result-video");
  ["play", "pause", "seeked", "timeupdate"].forEach((ev) => rv.addEventListener(ev, syncBefore));
  syncControls();
}

init();
