// cnnlab serve: the "one value, computed" panel, filled from /api/explain.
//
// For a conv map it shows the input window under the filter, the filter's weights as numbers
// and as an image, the tutorial's sum with its numbers and the model's own value beside it.
"use strict";

async function explain() {
  const selection = state.selection;
  if (!selection) return;
  if (selection.stage.kind !== "conv") {
    $("seen-marker").hidden = true;
    $("explain-body").replaceChildren(
      el("p", { class: "explain-where", text: `${selection.stage.title}, map ${selection.channel + 1}` }),
      el("p", { text: "Max pooling has no weights: each value is the largest of a 2x2 window "
        + "of the map before it, so the map keeps its strongest responses at half the size." }),
      el("p", { class: "hint", text: "Pick a tile of a conv layer to see a sum with its numbers." }),
    );
    return;
  }
  if (!state.input) return;
  if (state.explainBusy) {
    state.explainAgain = true;
    return;
  }
  state.explainBusy = true;
  try {
    const response = await fetch("/api/explain", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        input: state.input, layer: selection.stage.name,
        channel: selection.channel, row: selection.row, col: selection.col,
      }),
    });
    const body = await response.json();
    if (!response.ok) showError(body.error || `error ${response.status}`);
    else if (state.selection === selection) showExplanation(body, selection.stage);
  } catch (err) {
    showError(`cannot reach the server (${err.message})`);
  } finally {
    state.explainBusy = false;
    if (state.explainAgain) {
      state.explainAgain = false;
      explain();
    }
  }
}

function numberGrid(values, padding, colour) {
  const table = el("table", { class: "numgrid" });
  values.forEach((row, r) => {
    const tr = el("tr");
    row.forEach((v, c) => {
      const td = el("td", { text: fmt(v) });
      if (padding && padding[r][c]) {
        td.className = "pad";
        td.title = "padding: a zero outside the image";
      } else if (colour) {
        const [red, green, blue] = colour(v);
        td.style.background = `rgb(${red},${green},${blue})`;
        td.style.color = red + green + blue > 380 ? "#000" : "#fff";
      }
      tr.append(td);
    });
    table.append(tr);
  });
  return table;
}

function filterImage(weights) {
  const flat = weights.flat();
  const limit = Math.max(1e-12, ...flat.map(Math.abs));
  const canvas = el("canvas", { class: "filter-img", width: weights[0].length, height: weights.length });
  const bytes = Uint8Array.from(flat, (v) => Math.round(((v + limit) / (2 * limit)) * 255));
  paint(canvas, bytes, 0, weights[0].length, weights.length, lutFor(-limit, limit));
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", "the filter as an image");
  return canvas;
}

function gridBlock(caption, ...content) {
  return el("div", { class: "grid-block" }, el("span", { class: "grid-caption", text: caption }), ...content);
}

function showExplanation(e, stage) {
  const body = [];
  const [kh, kw] = e.kernel;
  body.push(el("p", {
    class: "explain-where",
    text: `${e.layer}, map ${e.channel + 1} of ${stage.shape[0]}, at row ${e.row}, column ${e.col}`,
  }));
  const single = e.terms.length === 1;
  const shown = single ? e.terms[0]
    : e.terms.reduce((a, b) => (Math.abs(b.partial_sum) > Math.abs(a.partial_sum) ? b : a));
  const wLimit = Math.max(1e-12, ...shown.weights.flat().map(Math.abs));
  const xs = shown.window.flat();
  const xLow = Math.min(0, ...xs);
  const xHigh = Math.max(1e-12, ...xs);
  const grey = (v) => Array(3).fill(Math.round((255 * (v - xLow)) / (xHigh - xLow)));
  const grids = el("div", { class: "grids" },
    gridBlock(single ? "input x under the filter" : `input channel ${shown.channel}, under the filter`,
      numberGrid(shown.window, e.in_padding, grey)),
    gridBlock(`filter w, ${kh}x${kw}`,
      numberGrid(shown.weights, null, (v) => colourOf(v, -wLimit, wLimit))),
    gridBlock("as an image", filterImage(shown.weights)),
  );
  if (!single) {
    body.push(el("p", { class: "hint", text:
      `${e.layer} adds up ${e.terms.length} input channels, each with its own ${kh}x${kw} weights. `
      + `Shown: channel ${shown.channel}, the largest share. All the shares:` }));
    const partials = el("div", { class: "partials" });
    const limit = Math.max(1e-12, ...e.terms.map((t) => Math.abs(t.partial_sum)));
    for (const t of e.terms) {
      const [r, g, b] = colourOf(t.partial_sum, -limit, limit);
      const cell = el("span", { text: fmt(t.partial_sum), title: `channel ${t.channel}` });
      cell.style.background = `rgb(${r},${g},${b})`;
      cell.style.color = r + g + b > 380 ? "#000" : "#fff";
      partials.append(cell);
    }
    body.push(partials);
  }
  body.push(grids);
  body.push(el("pre", { class: "formula", text: e.formula.join("\n") }));
  body.push(el("dl", { class: "values" },
    el("dt", { text: "bias b" }), el("dd", { text: fmt(e.bias, 4) }),
    el("dt", { text: "the sum, by cnnlab.layers.conv2d" }), el("dd", { text: fmt(e.reference, 4) }),
    el("dt", { text: `the model's own ${e.layer} (before batch norm)` }),
    el("dd", { text: fmt(e.model_value, 4), "data-model-value": String(e.model_value) }),
  ));
  body.push(el("p", {
    class: `check ${e.matches ? "ok" : "bad"}`,
    text: e.matches ? `\u2713 the same, to within 0.0001 (difference ${e.difference ? e.difference.toExponential(1) : 0})`
      : `\u2717 they differ by ${e.difference.toExponential(2)}`,
  }));
  $("explain-body").replaceChildren(...body);
  markInput(e);
}

// Where the filter sits on the input image, for a layer that reads the image itself.
function markInput(e) {
  const marker = $("seen-marker");
  const info = state.info;
  const sameAsInput = info && e.input_shape.join("x") === info.input_shape.join("x");
  if (!sameAsInput) {
    marker.hidden = true;
    return;
  }
  const scale = SEEN_PX / info.input_shape[2];
  const top = Math.min(...e.input_rows);
  const left = Math.min(...e.input_cols);
  Object.assign(marker.style, {
    top: `${top * scale}px`, left: `${left * scale}px`,
    height: `${(Math.max(...e.input_rows) - top + 1) * scale}px`,
    width: `${(Math.max(...e.input_cols) - left + 1) * scale}px`,
  });
  marker.hidden = false;
}

