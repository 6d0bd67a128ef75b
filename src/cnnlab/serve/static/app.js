// cnnlab serve: the live page. Plain JavaScript, no framework, no build step.
//
// The pad is sent as a PNG to /api/predict?activations=1 at most every DEBOUNCE_MS while
// drawing, with never more than one request in flight: whatever changed meanwhile is sent as
// soon as the answer arrives. The answer carries the 28x28 the model saw, the probabilities and
// every conv and pooling stage's maps (uint8, scaled with the stage's low and high); clicking a
// map asks /api/explain for the tutorial's sum at that spot.
"use strict";

const DEBOUNCE_MS = 100;
const BRUSH = 19; // px on the 280 px pad: about MNIST's stroke width once scaled to 20 px
const SEEN_PX = 112;

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const padCtx = pad.getContext("2d", { willReadFrequently: false });

const state = {
  info: null,
  stages: [], // {name, kind, shape, title, section, tiles: [button], legend, maps: Uint8Array}
  input: null, // the {shape, data} the model saw last
  next: null, // what to send next: "pad" or a File; null when nothing changed
  timer: null,
  inFlight: false,
  selection: null, // {stage, channel, row, col}
  explainBusy: false,
  explainAgain: false,
  drawing: false,
  last: null,
  ready: false,
  example: false, // the pad shows the example drawing
};

// ---------- the pad ----------

function clearPad() {
  padCtx.fillStyle = "#000";
  padCtx.fillRect(0, 0, pad.width, pad.height);
}

function padPoint(event) {
  const rect = pad.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) * pad.width) / rect.width,
    y: ((event.clientY - rect.top) * pad.height) / rect.height,
  };
}

function stroke(from, to) {
  padCtx.strokeStyle = "#fff";
  padCtx.fillStyle = "#fff";
  padCtx.lineWidth = BRUSH;
  padCtx.lineCap = "round";
  padCtx.lineJoin = "round";
  padCtx.beginPath();
  padCtx.moveTo(from.x, from.y);
  padCtx.lineTo(to.x, to.y);
  padCtx.stroke();
}

pad.addEventListener("pointerdown", (event) => {
  if (event.pointerType === "mouse" && event.button !== 0) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  state.drawing = true;
  state.example = false;
  state.last = padPoint(event);
  stroke(state.last, state.last);
  changed();
});

pad.addEventListener("pointermove", (event) => {
  if (!state.drawing) return;
  const events = (event.getCoalescedEvents && event.getCoalescedEvents()) || [];
  for (const e of events.length ? events : [event]) {
    const point = padPoint(e);
    stroke(state.last, point);
    state.last = point;
  }
  changed();
});

function endStroke() {
  if (!state.drawing) return;
  state.drawing = false;
  send("pad", 0);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function changed() {
  send("pad", DEBOUNCE_MS);
}

// An example so that the page is never blank: a "2" drawn with the same brush.
function drawExample() {
  clearPad();
  const path = [];
  for (let t = 0; t <= 1.0001; t += 0.05) {
    const a = Math.PI * (1.1 - 1.25 * t);
    path.push({ x: 140 + 48 * Math.cos(a), y: 100 - 44 * Math.sin(a) });
  }
  const end = path[path.length - 1];
  path.push({ x: end.x - 35, y: end.y + 45 }, { x: 92, y: 205 }, { x: 140, y: 203 }, { x: 196, y: 206 });
  for (let i = 1; i < path.length; i++) stroke(path[i - 1], path[i]);
}

// ---------- requests ----------

function send(source, delay) {
  state.next = source;
  if (delay === 0) {
    clearTimeout(state.timer);
    state.timer = null;
    pump();
  } else if (state.timer === null) {
    state.timer = setTimeout(() => {
      state.timer = null;
      pump();
    }, delay);
  }
}

function padBlob() {
  return new Promise((resolve) => pad.toBlob(resolve, "image/png"));
}

async function pump() {
  if (state.inFlight || state.next === null) return;
  const source = state.next;
  state.next = null;
  state.inFlight = true;
  try {
    const top = state.info ? state.info.classes.length : 10;
    const url = `/api/predict?activations=1&top_k=${top}`;
    let response;
    if (source === "pad") {
      const blob = await padBlob();
      response = await fetch(url, { method: "POST", headers: { "Content-Type": "image/png" }, body: blob });
    } else {
      const form = new FormData();
      form.append("file", source, source.name || "upload");
      response = await fetch(url, { method: "POST", body: form });
    }
    const body = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
    if (!response.ok) showError(body.error || `error ${response.status}`);
    else show(body);
  } catch (err) {
    showError(`cannot reach the server (${err.message})`);
  } finally {
    state.inFlight = false;
    if (state.next !== null && state.timer === null) pump();
  }
}

function setStatus(text, error = false) {
  const status = $("status");
  status.textContent = text || "\u00a0";
  status.classList.toggle("error", error);
}

function showError(message) {
  setStatus(message, true);
}

// ---------- showing an answer ----------

function show(answer) {
  if (!answer.ink) {
    showIdle(answer.message || "no ink");
    return;
  }
  document.body.classList.remove("idle");
  const guess = $("guess");
  guess.textContent = answer.label;
  guess.dataset.label = answer.label;
  guess.classList.toggle("long", answer.label.length > 2);
  $("guess-confidence").textContent = `${pct(answer.confidence)} sure`;
  showProbabilities(answer.top);
  state.input = answer.input;
  showInput(answer.input);
  for (const stage of answer.stages || []) showStage(stage);
  setStatus(state.example ? "An example to start with: press Clear and draw your own."
    : `Answered in ${Math.round(answer.ms)} ms on the server.`);
  if (state.selection) explain();
  if (!state.ready) {
    state.ready = true;
    document.body.dataset.ready = "1";
  }
}

function showIdle(message) {
  document.body.classList.add("idle");
  const guess = $("guess");
  guess.textContent = "\u2013";
  guess.dataset.label = "";
  $("guess-confidence").textContent = "\u00a0";
  showProbabilities([]);
  const seen = $("seen").getContext("2d");
  seen.fillStyle = "#000";
  seen.fillRect(0, 0, 28, 28);
  for (const stage of state.stages) {
    stage.section.classList.add("empty");
    for (const tile of stage.tiles) {
      const c = tile.firstChild.getContext("2d");
      c.fillStyle = "#000";
      c.fillRect(0, 0, tile.firstChild.width, tile.firstChild.height);
    }
  }
  setStatus(message.charAt(0).toUpperCase() + message.slice(1));
}

function buildProbabilities(classes) {
  const list = $("probs");
  list.textContent = "";
  for (const name of classes) {
    list.append(
      el("li", { "data-class": name },
        el("span", { class: "name", text: name, title: name }),
        el("span", { class: "bar" }, el("span", { class: "fill" })),
        el("span", { class: "pct", text: "" })),
    );
  }
}

function showProbabilities(top) {
  const p = new Map(top.map(([name, value]) => [name, value]));
  const best = top.length ? top[0][0] : null;
  for (const li of $("probs").children) {
    const value = p.get(li.dataset.class) || 0;
    li.querySelector(".fill").style.width = `${(100 * value).toFixed(1)}%`;
    li.querySelector(".pct").textContent = top.length ? pct(value) : "";
    li.classList.toggle("best", li.dataset.class === best);
  }
}

function showInput(input) {
  const [channels, height, width] = input.shape;
  const bytes = decode(input.data);
  const canvas = $("seen");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(width, height);
  const plane = width * height;
  for (let i = 0; i < plane; i++) {
    for (let k = 0; k < 3; k++) image.data[i * 4 + k] = bytes[(channels === 3 ? k * plane : 0) + i];
    image.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
  $("seen-shape").textContent = `${width}x${height}, ${channels === 1 ? "grey" : "colour"}: the model's whole input.`;
}

// ---------- feature maps ----------

function tileSize(width) {
  return width * Math.max(1, Math.round(42 / width));
}

function buildStages(stages) {
  const box = $("stages");
  box.textContent = "";
  state.stages = stages.map((info, index) => {
    const [channels, height, width] = info.shape;
    const size = tileSize(width);
    const legend = el("div", { class: "legend" });
    const head = el("div", { class: "stage-head" },
      el("h3", { class: "stage-title", text: info.title }), legend);
    const tiles = el("div", { class: "tiles", role: "group", "aria-label": info.title });
    tiles.style.setProperty("--tile", `${size}px`);
    const section = el("section", { class: "stage empty", "data-stage": info.name }, head, tiles);
    const stage = { ...info, index, section, legend, tiles: [], maps: null };
    for (let c = 0; c < channels; c++) {
      const canvas = el("canvas", { width, height });
      const tile = el("button", {
        type: "button", class: "tile", tabIndex: c === 0 ? 0 : -1,
        "aria-label": `${info.name}, map ${c + 1} of ${channels}`,
      }, canvas);
      tile.addEventListener("click", (event) => pick(stage, c, event));
      tile.addEventListener("keydown", (event) => moveFocus(stage, c, event));
      tiles.append(tile);
      stage.tiles.push(tile);
    }
    box.append(section);
    return stage;
  });
}

function moveFocus(stage, channel, event) {
  const steps = { ArrowLeft: -1, ArrowRight: 1, Home: -channel, End: stage.tiles.length - 1 - channel };
  let step = steps[event.key];
  if (event.key === "ArrowUp" || event.key === "ArrowDown") {
    const top = stage.tiles[0].offsetTop;
    const perRow = Math.max(1, stage.tiles.filter((t) => t.offsetTop === top).length);
    step = event.key === "ArrowUp" ? -perRow : perRow;
  }
  if (step === undefined) return;
  event.preventDefault();
  const next = Math.max(0, Math.min(stage.tiles.length - 1, channel + step));
  stage.tiles[channel].tabIndex = -1;
  stage.tiles[next].tabIndex = 0;
  stage.tiles[next].focus();
}

function showStage(answer) {
  const stage = state.stages.find((s) => s.name === answer.name);
  if (!stage) return;
  const [channels, height, width] = answer.shape;
  const bytes = decode(answer.data);
  const lut = lutFor(answer.low, answer.high);
  stage.maps = bytes;
  stage.low = answer.low;
  stage.high = answer.high;
  stage.section.classList.remove("empty");
  for (let c = 0; c < channels; c++) {
    paint(stage.tiles[c].firstChild, bytes, c * width * height, width, height, lut);
  }
  showLegend(stage.legend, answer.low, answer.high);
}

function showLegend(legend, low, high) {
  let bar = legend.querySelector("canvas");
  if (!bar) {
    bar = el("canvas", { width: 80, height: 1 });
    legend.append(el("span", { class: "low" }), bar, el("span", { class: "high" }));
  }
  const lut = lutFor(low, high);
  const ramp = new Uint8Array(80).map((_, i) => Math.round((i / 79) * 255));
  paint(bar, ramp, 0, 80, 1, lut);
  legend.querySelector(".low").textContent = fmt(low, 2);
  legend.querySelector(".high").textContent = fmt(high, 2);
}

// The value under the pointer; from the keyboard, the map's strongest value.
function pick(stage, channel, event) {
  const [, height, width] = stage.shape;
  let row;
  let col;
  const canvas = stage.tiles[channel].firstChild;
  if (event.detail > 0 && event.clientX !== undefined) {
    const rect = canvas.getBoundingClientRect();
    col = Math.floor(((event.clientX - rect.left) / rect.width) * width);
    row = Math.floor(((event.clientY - rect.top) / rect.height) * height);
  } else if (stage.maps) {
    let best = -1;
    for (let i = 0; i < width * height; i++) {
      const v = stage.maps[channel * width * height + i];
      if (v > best) { best = v; row = Math.floor(i / width); col = i % width; }
    }
  } else {
    row = Math.floor(height / 2);
    col = Math.floor(width / 2);
  }
  row = Math.max(0, Math.min(height - 1, row));
  col = Math.max(0, Math.min(width - 1, col));
  for (const s of state.stages) for (const t of s.tiles) t.classList.remove("selected");
  stage.tiles[channel].classList.add("selected");
  state.selection = { stage, channel, row, col };
  markTile();
  explain();
}

function markTile() {
  document.querySelectorAll(".tile .marker").forEach((m) => m.remove());
  const { stage, channel, row, col } = state.selection;
  const [, height, width] = stage.shape;
  const marker = el("div", { class: "marker" });
  Object.assign(marker.style, {
    left: `${(100 * col) / width}%`, top: `${(100 * row) / height}%`,
    width: `${100 / width}%`, height: `${100 / height}%`,
  });
  stage.tiles[channel].append(marker);
}

// ---------- the model panel ----------

function showModel(info) {
  state.info = info;
  const acc = info.test_accuracy == null ? "" : ` \u00b7 test accuracy ${(100 * info.test_accuracy).toFixed(1)}%`;
  $("model-line").textContent = `${info.name} trained on ${info.dataset} \u00b7 `
    + `${info.parameters.toLocaleString("en")} parameters${acc}`;
  if (!info.drawing) {
    $("pad-title").textContent = "Upload an image, or draw";
    $("pad-hint").textContent = `This model learned ${info.dataset}: pictures like those work `
      + "better than drawings. Upload one, or drop it on the pad.";
  }
  const facts = [
    ["Model", info.name], ["Run", info.run], ["Dataset", info.dataset],
    ["Classes", info.classes.join(", ")], ["Input", info.input_text],
    ["Parameters", info.parameters.toLocaleString("en")],
    ["Multiply-adds", info.mult_adds.toLocaleString("en")],
    ["Preprocessing", info.preprocessing === "mnist"
      ? "like MNIST: ink fitted in 20x20, centred in 28x28" : "resized to the input size"],
  ];
  if (info.test_accuracy != null) facts.push(["Test accuracy", `${(100 * info.test_accuracy).toFixed(2)}%`]);
  $("model-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));

  const shape = (s) => (s ? `(${s.join(", ")})` : "-");
  const head = el("tr", {}, ...["layer", "type", "output", "params"].map((h, i) =>
    el("th", { text: h, class: i === 3 ? "num" : "" })));
  $("summary").replaceChildren(head, ...info.summary.map((r) => el("tr", {},
    el("td", { text: r.name }), el("td", { text: r.kind }),
    el("td", { text: r.output_shapes.map(shape).join(", ") }),
    el("td", { class: "num", text: r.parameters.toLocaleString("en") }))));

  const columns = [["epoch", "epoch", (v) => v], ["loss", "loss", (v) => fmt(v, 4)],
    ["train_accuracy", "train", (v) => `${(100 * v).toFixed(2)}%`],
    ["val_accuracy", "val", (v) => `${(100 * v).toFixed(2)}%`],
    ["test_accuracy", "test", (v) => `${(100 * v).toFixed(2)}%`],
    ["seconds", "time", (v) => `${v.toFixed(1)} s`]]
    .filter(([key]) => info.metrics.some((m) => m[key] != null));
  if (!info.metrics.length) {
    $("metrics").replaceChildren(el("tr", {}, el("td", { text: "no metrics.jsonl in this run" })));
  } else {
    $("metrics").replaceChildren(
      el("tr", {}, ...columns.map(([, h]) => el("th", { text: h, class: "num" }))),
      ...info.metrics.map((m) => el("tr", {}, ...columns.map(([key, , f]) =>
        el("td", { class: "num", text: m[key] == null ? "" : f(m[key]) })))),
    );
  }
  buildProbabilities(info.classes);
  buildStages(info.stages);
}

// ---------- uploads ----------

async function upload(file) {
  if (!file) return;
  try {
    const bitmap = await createImageBitmap(file);
    clearPad();
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const w = bitmap.width * scale;
    const h = bitmap.height * scale;
    padCtx.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  } catch (err) {
    clearPad(); // the server says what is wrong with it
  }
  state.example = false;
  setStatus(`Reading ${file.name}\u2026`);
  send(file, 0);
}

$("file").addEventListener("change", (event) => {
  upload(event.target.files[0]);
  event.target.value = "";
});

const dropZone = $("drop-zone");
dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropZone.classList.add("dragging");
});
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  upload(event.dataTransfer.files[0]);
});

$("clear").addEventListener("click", () => {
  clearPad();
  state.example = false;
  showIdle("Cleared: draw a digit on the pad.");
  state.next = null;
});

// ---------- start ----------

async function start() {
  clearPad();
  try {
    const response = await fetch("/api/model");
    showModel(await response.json());
  } catch (err) {
    showError(`cannot load the model (${err.message})`);
    return;
  }
  drawExample();
  state.example = true;
  send("pad", 0);
}

start();
