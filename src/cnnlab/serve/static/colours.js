// cnnlab serve: colours and small drawing helpers shared by the page's scripts.
//
// Every map is drawn with one rule: zero is black, positive values run through warm colours and
// negative ones through blue, each side scaled by its own largest value.
"use strict";

const WARM = [[0, 0, 0], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
const COLD = [[0, 0, 0], [20, 60, 140], [47, 111, 237], [150, 220, 255]];

function ramp(stops, t) {
  const x = Math.max(0, Math.min(1, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  return stops[i].map((a, k) => Math.round(a + (stops[i + 1][k] - a) * f));
}

// value -> colour: zero is black, positive values warm, negative ones blue, each side scaled
// by its own largest value, so the colour of zero never moves.
function colourOf(value, low, high) {
  if (value >= 0) return ramp(WARM, high > 0 ? value / high : 0);
  return ramp(COLD, low < 0 ? value / low : 0);
}

function lutFor(low, high) {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let b = 0; b < 256; b++) {
    const rgb = colourOf(low + (b / 255) * (high - low), low, high);
    lut.set(rgb, b * 3);
  }
  return lut;
}

function paint(canvas, bytes, offset, width, height, lut) {
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(width, height);
  const px = image.data;
  for (let i = 0, n = width * height; i < n; i++) {
    const b = bytes[offset + i] * 3;
    px[i * 4] = lut[b];
    px[i * 4 + 1] = lut[b + 1];
    px[i * 4 + 2] = lut[b + 2];
    px[i * 4 + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

function decode(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

const fmt = (v, d = 3) => (Number.isFinite(v) ? v.toFixed(d) : "-");
const pct = (p) => `${(100 * p).toFixed(1)}%`;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role") node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

