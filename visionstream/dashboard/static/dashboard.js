// The dashboard page: one WebSocket brings frames (binary), face results and panels (JSON); it reconnects
// by itself, so the page outlives dashboard and worker restarts.
"use strict";

// Each frame comes with the newest result at or before it (the server delays the video by the analysis
// latency for that). A result older than this, against the frame shown, is not drawn: its faces have moved on
// (an overloaded worker in live mode analyses frames in bursts with gaps between them).
const RESULT_MAX_AGE = 1.0;
const BOX = "#00ff66", NAMED = "#ffcc00";
const TILE_KEPT_MS = 10000;

const tiles = new Map();  // camera id -> tile
const dashboard = { tiles, panels: null, connects: 0 };
window.dashboard = dashboard;  // read by the browser test, and handy in the console

function tile(camera) {
  let t = tiles.get(camera);
  if (t) return t;
  document.getElementById("empty")?.remove();
  const root = document.createElement("div");
  root.className = "tile";
  root.dataset.camera = camera;
  root.innerHTML = '<canvas></canvas><div class="caption"><span class="name"></span><span class="age"></span></div>';
  root.querySelector(".name").textContent = camera;
  document.getElementById("tiles").append(root);
  t = { root, canvas: root.querySelector("canvas"), age: root.querySelector(".age"),
        frame: null, result: null, drawnResult: null, framesDrawn: 0, boxesDrawn: 0, drawnAt: performance.now() };
  tiles.set(camera, t);
  return t;
}

function draw(t, bitmap) {
  const { canvas, frame, result } = t;
  if (canvas.width !== frame.width || canvas.height !== frame.height) {
    canvas.width = frame.width;
    canvas.height = frame.height;
  }
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  t.framesDrawn += 1;
  t.drawnAt = performance.now();
  t.boxesDrawn = 0;
  t.drawnResult = null;
  const age = result ? frame.captured_at - result.captured_at : null;
  if (result && age <= RESULT_MAX_AGE) {
    // Boxes are in the analysed frame's pixels; the shown frame may differ in size.
    const sx = canvas.width / result.width, sy = canvas.height / result.height;
    ctx.lineWidth = Math.max(2, canvas.width / 320);
    ctx.font = `${Math.max(12, canvas.width / 60)}px system-ui, sans-serif`;
    for (const face of result.faces) {
      const [x1, y1, x2, y2] = face.box;
      ctx.strokeStyle = face.person ? NAMED : BOX;
      ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
      if (face.person) {
        ctx.fillStyle = NAMED;
        ctx.fillText(face.person, x1 * sx, y1 * sy - 4);
      }
      t.boxesDrawn += 1;
    }
    t.drawnResult = result;
  }
  t.root.dataset.seq = frame.seq;
  t.root.dataset.resultSeq = result ? result.seq : "";
  t.root.dataset.boxes = t.boxesDrawn;
  t.root.dataset.frames = t.framesDrawn;
  t.age.textContent = result === null ? "no result yet"
    : age > RESULT_MAX_AGE ? `no recent result (${age.toFixed(1)} s old)`
    : `${result.face_count} faces · result ${age.toFixed(2)} s older than the frame (${frame.seq - result.seq} frames)`;
}

async function onFrame(buffer) {
  const length = new DataView(buffer).getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  const t = tile(header.camera);
  const bitmap = await createImageBitmap(new Blob([new Uint8Array(buffer, 4 + length)], { type: "image/jpeg" }));
  if (t.frame && header.seq < t.frame.seq) return;  // decoded after a newer one
  t.frame = header;
  t.result = header.result;
  draw(t, bitmap);
  bitmap.close();
}

const fmt = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)} %`);
const secs = (v) => (v === null || v === undefined ? "–" : `${v.toFixed(2)} s`);

function rows(id, items) {
  const table = document.getElementById(id);
  table.replaceChildren(...items.map((cells) => {
    const tr = document.createElement("tr");
    cells.forEach((cell, i) => {
      const td = document.createElement("td");
      td.textContent = cell;
      if (i > 0 && typeof cell === "number") td.className = "n";
      tr.append(td);
    });
    return tr;
  }));
}

function set(id, text) { document.getElementById(id).textContent = text; }

function onPanels(p) {
  dashboard.panels = p;
  const totals = p.totals || {};
  const frames = totals.frames || {};
  set("images-rate", fmt(p.images_per_second));
  set("images-total", totals.images ?? "–");
  set("frames-rate", fmt(p.frames_per_second));
  set("frames-processed", frames.processed ?? "–");
  set("frames-skipped", frames.skipped ?? "–");
  set("drop-rate", pct(p.drop_rate));
  set("drop-rate-total", pct(frames.drop_rate));
  set("faces-rate", fmt(p.faces_per_minute, 0));
  set("faces-total", frames.faces ?? "–");
  set("latency-frames", `${secs(p.latency.frames.p50)} / ${secs(p.latency.frames.p99)}`);
  set("latency-images", `${secs(p.latency.images.p50)} / ${secs(p.latency.images.p99)}`);
  rows("categories", (totals.top_categories || []).map((c) => [c.category, c.images]));
  rows("dead-letters", Object.entries(totals.dead_letters || {}));
  rows("identified", p.identified.map((i) => [i.person, i.camera_id, fmt(i.similarity, 2)]));
  // Distinct visitors (a person enrolled by name, else an anonymous visitor, else a visit): PostgreSQL's count.
  const visitors = totals.visitors || {};
  set("visitors-total", visitors.visitors ?? "–");
  set("visits-total", visitors.visits ?? "–");
  rows("visitors", Object.entries(visitors.cameras || {}).map(([camera, c]) =>
    [camera, `${c.visitors} visitors`, `${c.visits} visits`, `${c.faces} faces`]));
  rows("workers", (totals.workers || []).map((w) => [w.hostname, w.topic, w.partitions.join(", "),
    `${Math.max(0, p.at - w.last_result).toFixed(0)} s ago`]));
  const bad = Object.values(p.bad_records || {}).reduce((a, b) => a + b, 0);
  set("updated", (totals.error ? totals.error : `updated ${new Date(p.at * 1000).toLocaleTimeString()}`)
    + (bad ? ` · ${bad} bad records skipped` : ""));
  // Cameras the server dropped (idle, or beyond its cap) leave the page too, once no frame came for a while.
  const shown = new Set(p.cameras || []);
  for (const [camera, t] of tiles) {
    if (!shown.has(camera) && performance.now() - t.drawnAt > TILE_KEPT_MS) { t.root.remove(); tiles.delete(camera); }
  }
}

function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  const status = document.getElementById("status");
  ws.onopen = () => { dashboard.connects += 1; status.textContent = "live"; status.className = "live"; };
  ws.onmessage = (event) => {
    if (event.data instanceof ArrayBuffer) { onFrame(event.data); return; }
    const message = JSON.parse(event.data);
    if (message.type === "panels") onPanels(message);
  };
  ws.onclose = () => {
    status.textContent = "reconnecting";
    status.className = "";
    setTimeout(connect, 1000);
  };
}

connect();
