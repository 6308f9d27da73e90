// gradwatch's TensorBoard tab (the GRADWATCH tab). A plain ES module, no build step: TensorBoard loads it in an
// iframe whose base URL is /data/plugin/gradwatch/, and calls render(). The server downsamples (routes in
// gradwatch/_tbplugin/_plugin.py); this module draws what it gets.

const KIND_COLOURS = {
  vanishing: "#1565c0", exploding: "#d32f2f", nonfinite: "#000000", divergence: "#6a1b9a", spike: "#ef6c00",
  saturated: "#00838f", dead: "#5d4037", collapsing: "#ad1457",
};
const RUN_COLOURS = ["#ff7043", "#0077bb", "#009988", "#ee3377", "#33bbee", "#cc3311", "#aa4499", "#777777"];
const SPECIAL = {nan: "#ff00ff", inf: "#ff1744", zero: "#000000", none: "#eceff1"};
// viridis, 9 stops
const VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"];

const STYLE = `
:root { font-family: Roboto, "Helvetica Neue", Arial, sans-serif; font-size: 13px; color: #212121; }
body { margin: 0; background: #f5f5f5; }
#gw { padding: 12px 16px 32px; max-width: 1800px; }
#gw header { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin-bottom: 8px; }
#gw header h1 { font-size: 16px; font-weight: 500; margin: 0 12px 0 0; }
#gw select, #gw button, #gw input { font: inherit; }
#gw button { border: 1px solid #bdbdbd; background: #fff; border-radius: 3px; padding: 3px 10px; cursor: pointer; }
#gw section { background: #fff; border-radius: 4px; box-shadow: 0 1px 2px rgba(0,0,0,.15); padding: 10px 14px;
  margin-bottom: 14px; }
#gw h2 { font-size: 14px; font-weight: 500; margin: 0 0 6px; }
#gw h2 small { font-weight: 400; color: #616161; margin-left: 8px; }
#gw .gw-msg { padding: 10px 14px; background: #fff8e1; border-left: 4px solid #ffa000; margin-bottom: 12px; }
#gw .gw-msg:empty { display: none; }
#gw .gw-note { color: #616161; font-size: 12px; margin: 4px 0; }
#gw .gw-wrap { position: relative; }
#gw canvas.gw-map { display: block; }
#gw canvas.gw-bar { display: inline-block; vertical-align: middle; border: 1px solid #bdbdbd; }
#gw .gw-tip { position: absolute; pointer-events: none; background: rgba(33,33,33,.92); color: #fff;
  padding: 5px 8px; border-radius: 3px; font-size: 12px; white-space: pre; display: none; z-index: 2; }
#gw .gw-legend { display: flex; flex-wrap: wrap; align-items: center; gap: 14px; margin-top: 6px; font-size: 12px; }
#gw .gw-swatch { display: inline-block; width: 12px; height: 12px; vertical-align: -2px; margin-right: 4px;
  border: 1px solid #9e9e9e; }
#gw .gw-box { display: inline-block; width: 14px; height: 10px; vertical-align: -1px; margin-right: 4px;
  border: 2px solid; background: transparent; }
#gw .gw-rows { display: none; }
#gw table { border-collapse: collapse; width: 100%; }
#gw th, #gw td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eeeeee; vertical-align: top; }
#gw th { font-weight: 500; color: #616161; }
#gw tbody tr { cursor: pointer; }
#gw tbody tr:hover { background: #e3f2fd; }
#gw tbody tr.gw-on { background: #bbdefb; }
#gw .gw-kind { font-weight: 500; }
#gw .gw-runs label { margin-right: 12px; white-space: nowrap; }
#gw .gw-runs .gw-swatch { border: none; }
#gw svg text { font-size: 11px; fill: #424242; }
`;

const state = {
  runs: [], run: null, metric: "grad_rms", range: null, map: null, episodes: [], selected: null,
  profileRuns: new Set(), profileStep: null, textSamples: 10,
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function getJson(path, params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== undefined));
  const response = await fetch(`${path}?${query}`);
  let body;
  try { body = await response.json(); } catch (e) { body = {error: `${path}: ${response.status} ${response.statusText}`}; }
  if (body && body.error) throw new Error(body.error);
  return body;
}

function message(text) {
  document.querySelector("#gw .gw-msg").textContent = text || "";
}

// --- colours -------------------------------------------------------------------------------------------------------

function hexRgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}
const VIRIDIS_RGB = VIRIDIS.map(hexRgb);

function colourAt(t) {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS_RGB.length - 1);
  const i = Math.min(VIRIDIS_RGB.length - 2, Math.floor(x));
  const f = x - i;
  return VIRIDIS_RGB[i].map((c, k) => Math.round(c + (VIRIDIS_RGB[i + 1][k] - c) * f));
}

function domain(map) {
  if (!map.range) return [0, 1];
  let [lo, hi] = map.range;
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  return [lo, hi];
}

function cellRgb(v, lo, hi) {
  if (v === null) return hexRgb(SPECIAL.none);
  if (typeof v === "string") return hexRgb(SPECIAL[v] || SPECIAL.none);
  return colourAt((v - lo) / (hi - lo));
}

function formatValue(v, log) {
  if (v === null) return "no data";
  if (v === "nan") return "NaN";
  if (v === "inf") return "Inf";
  if (v === "zero") return "0";
  if (!log) return String(v);
  return `${v.toFixed(2)}  (${Number(Math.pow(10, v).toPrecision(3)).toExponential(2)})`;
}

// --- names ---------------------------------------------------------------------------------------------------------

function elide(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let keepTail = Math.ceil(text.length * 0.6);
  let keepHead = 0;
  while (keepTail > 1) {
    keepHead = Math.min(6, Math.floor(keepTail / 3));
    const s = `${text.slice(0, keepHead)}…${text.slice(text.length - keepTail)}`;
    if (ctx.measureText(s).width <= width) return s;
    keepTail -= 1;
  }
  return `…${text.slice(-1)}`;
}

// --- heat map ------------------------------------------------------------------------------------------------------

const GEOM = {left: 0, top: 16, bottom: 30, right: 10, rowH: 1, colW: 1, width: 0, height: 0};

function layoutMap(map, wrap) {
  const rows = map.rows.length;
  const rowH = Math.max(1, Math.min(22, Math.floor(640 / Math.max(1, rows))));
  const probe = document.createElement("canvas").getContext("2d");
  probe.font = "11px Roboto, Arial, sans-serif";
  const widest = Math.max(40, ...map.rows.slice(0, 2000).map((r) => probe.measureText(r).width));
  const left = Math.min(220, Math.ceil(widest) + 14);
  const width = Math.max(200, wrap.clientWidth - left - GEOM.right);
  const cols = Math.max(1, map.edges.length - 1);
  Object.assign(GEOM, {left, rowH, width, height: rows * rowH, colW: width / cols});
}

function xOfStep(map, step) {
  const e = map.edges;
  if (!e.length) return 0;
  if (step <= e[0]) return 0;
  if (step >= e[e.length - 1]) return GEOM.width;
  let lo = 0, hi = e.length - 1;
  while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (e[mid] <= step) lo = mid; else hi = mid; }
  return (lo + (step - e[lo]) / (e[lo + 1] - e[lo])) * GEOM.colW;
}

function stepOfX(map, x) {
  const e = map.edges;
  const c = Math.min(e.length - 2, Math.max(0, Math.floor(x / GEOM.colW)));
  const f = Math.min(1, Math.max(0, x / GEOM.colW - c));
  return Math.round(e[c] + f * (e[c + 1] - e[c]));
}

// The episodes drawn on the map: for each one, its rows grouped into contiguous spans.
function episodeBoxes(map) {
  const index = new Map(map.rows.map((r, i) => [r, i]));
  const boxes = [];
  state.episodes.forEach((ep, n) => {
    const last = ep.end !== null ? ep.end : ep.last + 1;
    const x0 = xOfStep(map, ep.onset), x1 = Math.max(x0 + 2, xOfStep(map, last));
    if (x1 <= 0 || x0 >= GEOM.width) return;
    const rows = ep.layers.map((l) => index.get(l)).filter((i) => i !== undefined).sort((a, b) => a - b);
    if (!rows.length) {
      boxes.push({n, ep, x0, x1, r0: -1, r1: -1});
      return;
    }
    let start = rows[0], prev = rows[0];
    for (const r of rows.slice(1).concat([Infinity])) {
      if (r !== prev + 1) { boxes.push({n, ep, x0, x1, r0: start, r1: prev}); start = r; }
      prev = r;
    }
  });
  return boxes;
}

function drawMap() {
  const map = state.map;
  const canvas = document.querySelector("#gw .gw-map");
  const wrap = canvas.parentElement;
  layoutMap(map, wrap);
  const {left, top, bottom, right, rowH, width, height} = GEOM;
  const dpr = window.devicePixelRatio || 1;
  const cssW = left + width + right, cssH = top + height + bottom;
  canvas.width = Math.round(cssW * dpr);
  canvas.height = Math.round(cssH * dpr);
  canvas.style.width = `${cssW}px`;
  canvas.style.height = `${cssH}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);

  const rows = map.rows.length, cols = map.edges.length - 1;
  if (rows && cols > 0) {
    const [lo, hi] = domain(map);
    const image = new ImageData(cols, rows);
    for (let r = 0; r < rows; r++) {
      const line = map.cells[r];
      for (let c = 0; c < cols; c++) {
        const [R, G, B] = cellRgb(line[c], lo, hi);
        const k = (r * cols + c) * 4;
        image.data[k] = R; image.data[k + 1] = G; image.data[k + 2] = B; image.data[k + 3] = 255;
      }
    }
    const off = document.createElement("canvas");
    off.width = cols; off.height = rows;
    off.getContext("2d").putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, left, top, width, height);
  }

  // layer labels: every row when they fit, otherwise every k-th
  ctx.font = "11px Roboto, Arial, sans-serif";
  ctx.fillStyle = "#424242";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  const every = Math.max(1, Math.ceil(12 / rowH));
  for (let r = 0; r < rows; r += every) {
    ctx.fillText(elide(ctx, map.rows[r], left - 10), left - 5, top + (r + 0.5) * rowH);
  }

  // step axis
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  ctx.strokeStyle = "#9e9e9e";
  const first = map.edges[0], lastStep = map.edges[map.edges.length - 1] - 1;
  const ticks = niceTicks(first, lastStep, Math.max(2, Math.floor(width / 110)));
  for (const t of ticks) {
    const x = left + xOfStep(map, t);
    ctx.beginPath(); ctx.moveTo(x, top + height); ctx.lineTo(x, top + height + 4); ctx.stroke();
    ctx.fillText(String(t), x, top + height + 6);
  }
  ctx.textAlign = "left";
  ctx.fillText("step", left + width + 2 - 24, top + height + 18);

  // episodes
  for (const b of episodeBoxes(map)) {
    const colour = KIND_COLOURS[b.ep.kind] || "#37474f";
    const on = state.selected === b.n;
    ctx.strokeStyle = colour;
    ctx.lineWidth = on ? 3 : 1.5;
    if (b.r0 < 0) {  // model-wide: a bar above the map
      ctx.fillStyle = colour;
      ctx.fillRect(left + b.x0, 3, b.x1 - b.x0, on ? 9 : 6);
    } else {
      ctx.strokeRect(left + b.x0 + 0.5, top + b.r0 * rowH + 0.5, b.x1 - b.x0 - 1, (b.r1 - b.r0 + 1) * rowH - 1);
    }
  }
  ctx.lineWidth = 1;

  // zoom selection being dragged
  if (drag && drag.x1 !== undefined) {
    ctx.fillStyle = "rgba(255,255,255,0.35)";
    ctx.strokeStyle = "#212121";
    const a = Math.min(drag.x0, drag.x1), w = Math.abs(drag.x1 - drag.x0);
    ctx.fillRect(left + a, top, w, height);
    ctx.strokeRect(left + a + 0.5, top + 0.5, w, height - 1);
  }
}

function niceTicks(lo, hi, count) {
  if (hi <= lo) return [lo];
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi; t += step) out.push(Math.round(t));
  return out;
}

function drawLegend() {
  const map = state.map;
  const legend = document.querySelector("#gw .gw-legend");
  legend.textContent = "";
  const [lo, hi] = domain(map);
  const bar = el("canvas", {width: 200, height: 12, class: "gw-bar"});
  const ctx = bar.getContext("2d");
  for (let x = 0; x < 200; x++) {
    const [R, G, B] = colourAt(x / 199);
    ctx.fillStyle = `rgb(${R},${G},${B})`;
    ctx.fillRect(x, 0, 1, 12);
  }
  const fmt = (v) => (map.log ? `10^${v.toFixed(1)}` : String(Number(v.toPrecision(3))));
  legend.append(
    el("span", {text: map.label}),
    el("span", {}, el("span", {text: `${fmt(lo)} `}), bar, el("span", {text: ` ${fmt(hi)}`})),
  );
  const specials = [["nan", "NaN"], ["inf", "Inf"], ["none", "not logged"]];
  if (map.log) specials.splice(2, 0, ["zero", "0"]);
  for (const [key, text] of specials) {
    legend.append(el("span", {}, el("span", {class: "gw-swatch", style: `background:${SPECIAL[key]}`}), text));
  }
  const kinds = [...new Set(state.episodes.map((e) => e.kind))];
  for (const k of kinds) {
    legend.append(el("span", {}, el("span", {class: "gw-box", style: `border-color:${KIND_COLOURS[k] || "#37474f"}`}),
      `${k} episode`));
  }
}

function describeMap() {
  const map = state.map;
  const node = document.querySelector("#gw .gw-heat-note");
  const first = map.edges.length ? map.edges[0] : null;
  const last = map.edges.length ? map.edges[map.edges.length - 1] - 1 : null;
  const cols = Math.max(0, map.edges.length - 1);
  const span = cols && last - first + 1 > cols ? `, ${cols} columns (each the largest value over its steps)` : "";
  const zoom = state.range ? " (zoomed: Reset shows every step)" : " (drag across the map to zoom)";
  const order = map.depth_order ? "input side at the top" : "order of the names (no layer table in this run)";
  node.textContent = `${map.rows.length} rows, ${order}; steps ${first}–${last}${span}${zoom}. ` +
    `TensorBoard kept ${map.points_per_layer} points per layer.`;
  const list = document.querySelector("#gw .gw-rows");
  list.textContent = "";
  list.setAttribute("data-count", String(map.rows.length));
  for (const r of map.rows) list.append(el("li", {"data-layer": r, text: r}));
  const heat = document.querySelector("#gw .gw-heat");
  heat.setAttribute("data-run", map.run);
  heat.setAttribute("data-metric", map.metric);
  heat.setAttribute("data-rows", String(map.rows.length));
  heat.setAttribute("data-columns", String(cols));
}

let drag = null;

function hitTest(evt) {
  const canvas = document.querySelector("#gw .gw-map");
  const rect = canvas.getBoundingClientRect();
  const x = evt.clientX - rect.left - GEOM.left, y = evt.clientY - rect.top - GEOM.top;
  return {x, y, inside: x >= 0 && x < GEOM.width && y >= -GEOM.top && y < GEOM.height};
}

function showTip(evt) {
  const tip = document.querySelector("#gw .gw-tip");
  const map = state.map;
  if (!map || !map.rows.length || map.edges.length < 2) return;
  const {x, y, inside} = hitTest(evt);
  if (drag) { drag.x1 = Math.max(0, Math.min(GEOM.width, x)); drawMap(); }
  if (!inside || y < 0) { tip.style.display = "none"; return; }
  const r = Math.floor(y / GEOM.rowH), c = Math.min(map.edges.length - 2, Math.floor(x / GEOM.colW));
  const lo = map.edges[c], hi = map.edges[c + 1] - 1;
  const lines = [`layer ${map.rows[r]} (depth ${r})`, hi > lo ? `steps ${lo}–${hi}` : `step ${lo}`,
    `${map.label}: ${formatValue(map.cells[r][c], map.log)}`];
  for (const b of episodeBoxes(map)) {
    if (x >= b.x0 && x <= b.x1 && ((b.r0 <= r && r <= b.r1))) {
      lines.push(`${b.ep.kind} episode from step ${b.ep.onset}` + (b.ep.end !== null ? ` to ${b.ep.end}` : " (open)"));
    }
  }
  tip.textContent = lines.join("\n");
  tip.style.display = "block";
  const wrap = tip.parentElement.getBoundingClientRect();
  const px = evt.clientX - wrap.left + 14, py = evt.clientY - wrap.top + 14;
  tip.style.left = `${Math.min(px, wrap.width - 260)}px`;
  tip.style.top = `${py}px`;
}

function startDrag(evt) {
  const {x, y, inside} = hitTest(evt);
  if (inside && y >= 0) drag = {x0: x};
}

function endDrag(evt) {
  if (!drag) return;
  const {x} = hitTest(evt);
  const d = drag;
  drag = null;
  const x1 = Math.max(0, Math.min(GEOM.width, x));
  if (Math.abs(x1 - d.x0) < 4) { drawMap(); return; }
  const a = stepOfX(state.map, Math.min(d.x0, x1)), b = stepOfX(state.map, Math.max(d.x0, x1));
  state.range = [a, Math.max(a, b)];
  loadMap();
}

async function loadMap() {
  if (!state.run) return;
  const wrap = document.querySelector("#gw .gw-map").parentElement;
  try {
    const map = await getJson("heatmap", {
      run: state.run, metric: state.metric, columns: Math.max(100, Math.floor(wrap.clientWidth - 200)),
      start: state.range ? state.range[0] : null, end: state.range ? state.range[1] : null,
    });
    state.map = map;
    if (!map.rows.length) message(`Run ${state.run} has no ${state.metric} data yet.`);
    drawMap();
    drawLegend();
    describeMap();
  } catch (e) {
    message(String(e.message || e));
  }
}

// --- episodes ------------------------------------------------------------------------------------------------------

async function loadEpisodes() {
  const body = document.querySelector("#gw .gw-episodes tbody");
  const note = document.querySelector("#gw .gw-episodes .gw-note");
  body.textContent = "";
  state.episodes = [];
  state.selected = null;
  try {
    const data = await getJson("episodes", {run: state.run});
    state.episodes = data.episodes;
    note.textContent = !data.episodes.length ? "No symptom episodes in this run." :
      data.maybe_incomplete ? `TensorBoard keeps ${data.text_samples} alert texts per run by default, and this run ` +
        "has at least that many: some episodes may be missing. Start TensorBoard with " +
        "--samples_per_plugin text=1000 to see them all (or run gradwatch report)." : "Click an episode to show it on the map.";
  } catch (e) {
    note.textContent = String(e.message || e);
  }
  state.episodes.forEach((ep, n) => {
    const end = ep.end !== null ? String(ep.end) : `open (last seen ${ep.last})`;
    const row = el("tr", {"data-episode": String(n), onclick: () => selectEpisode(n)},
      el("td", {}, el("span", {class: "gw-swatch", style: `background:${KIND_COLOURS[ep.kind] || "#37474f"}`}),
        el("span", {class: "gw-kind", text: ep.kind})),
      el("td", {text: ep.where}), el("td", {text: String(ep.onset)}), el("td", {text: end}),
      el("td", {text: ep.advice || ""}));
    body.append(row);
  });
}

function selectEpisode(n) {
  const ep = state.episodes[n];
  state.selected = n;
  document.querySelectorAll("#gw .gw-episodes tbody tr").forEach((tr) =>
    tr.classList.toggle("gw-on", tr.getAttribute("data-episode") === String(n)));
  const last = ep.end !== null ? ep.end : ep.last;
  const pad = Math.max(2, Math.round((last - ep.onset) * 0.25));
  state.range = [Math.max(0, ep.onset - pad), last + pad];
  loadMap();
  document.querySelector("#gw .gw-heat").scrollIntoView({behavior: "smooth"});
}

// --- depth profile -------------------------------------------------------------------------------------------------

async function loadProfile() {
  const svg = document.querySelector("#gw .gw-profile svg");
  const runs = state.runs.filter((r) => state.profileRuns.has(r.name) && r.metrics.includes(state.metric));
  const results = [];
  for (const r of runs) {
    try {
      results.push(await getJson("profile", {run: r.name, metric: state.metric, step: state.profileStep}));
    } catch (e) {
      results.push({run: r.name, error: String(e.message || e), rows: [], values: []});
    }
  }
  drawProfile(svg, results);
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function drawProfile(root, results) {
  root.textContent = "";
  const width = Math.max(300, root.parentElement.clientWidth), height = 280;
  const m = {l: 56, r: 16, t: 14, b: 46};
  root.setAttribute("width", width);
  root.setAttribute("height", height);
  const finite = results.flatMap((p) => p.values.filter((v) => typeof v === "number"));
  const depth = Math.max(1, ...results.map((p) => p.rows.length));
  if (!finite.length) {
    const t = svg("text", {x: m.l, y: 40});
    t.textContent = "No values at this step.";
    root.append(t);
    return;
  }
  let lo = Math.min(...finite), hi = Math.max(...finite);
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const pad = (hi - lo) * 0.08;
  lo -= pad; hi += pad;
  const X = (i) => m.l + (depth === 1 ? 0.5 : i / (depth - 1)) * (width - m.l - m.r);
  const Y = (v) => m.t + (1 - (v - lo) / (hi - lo)) * (height - m.t - m.b);
  const log = results[0] && results[0].label && results[0].label.startsWith("log10");
  for (const t of niceTicks(Math.ceil(lo), Math.floor(hi), 6).filter((t) => t >= lo && t <= hi)) {
    root.append(svg("line", {x1: m.l, x2: width - m.r, y1: Y(t), y2: Y(t), stroke: "#eeeeee"}));
    const label = svg("text", {x: m.l - 6, y: Y(t) + 4, "text-anchor": "end"});
    label.textContent = log ? `1e${t}` : String(t);
    root.append(label);
  }
  const xlabel = svg("text", {x: (m.l + width - m.r) / 2, y: height - 8, "text-anchor": "middle"});
  xlabel.textContent = "depth (input side left)";
  root.append(xlabel);
  const ylabel = svg("text", {x: 12, y: m.t + (height - m.t - m.b) / 2, transform:
    `rotate(-90 12 ${m.t + (height - m.t - m.b) / 2})`, "text-anchor": "middle"});
  ylabel.textContent = (results[0].label || "").replace(/^log10 /, "") + (log ? " (log scale)" : "");
  root.append(ylabel);
  const longest = results.reduce((a, p) => (p.rows.length > a.rows.length ? p : a), results[0]);
  const every = Math.max(1, Math.ceil(depth / Math.floor((width - m.l - m.r) / 60)));
  longest.rows.forEach((name, i) => {
    if (i % every) return;
    const t = svg("text", {x: X(i), y: height - m.b + 14, "text-anchor": "middle"});
    t.textContent = name.length > 14 ? `…${name.slice(-13)}` : name;
    root.append(t);
  });
  results.forEach((p) => {
    const colour = RUN_COLOURS[state.runs.findIndex((r) => r.name === p.run) % RUN_COLOURS.length];
    const points = p.values.map((v, i) => [i, v]).filter(([, v]) => typeof v === "number");
    root.append(svg("polyline", {fill: "none", stroke: colour, "stroke-width": 2,
      points: points.map(([i, v]) => `${X(i)},${Y(v)}`).join(" "), "data-run": p.run}));
    p.values.forEach((v, i) => {
      const special = typeof v === "string";
      const dot = svg("circle", {cx: X(i), cy: special ? (v === "zero" ? Y(lo) : Y(hi)) : Y(v), r: special ? 5 : 3,
        fill: special ? SPECIAL[v] : colour});
      const title = svg("title");
      title.textContent = `${p.run}, layer ${p.rows[i]} (depth ${i}), step ${p.step}: ${formatValue(v, log)}`;
      dot.append(title);
      if (v !== null) root.append(dot);
    });
  });
  const note = document.querySelector("#gw .gw-profile .gw-note");
  note.textContent = results.map((p) => (p.error ? `${p.run}: ${p.error}` : `${p.run}: step ${p.step}`)).join(" · ");
}

function buildProfileControls() {
  const box = document.querySelector("#gw .gw-profile .gw-runs");
  box.textContent = "";
  state.runs.forEach((r, i) => {
    const input = el("input", {type: "checkbox", "data-run": r.name});
    input.checked = state.profileRuns.has(r.name);
    input.addEventListener("change", () => {
      if (input.checked) state.profileRuns.add(r.name); else state.profileRuns.delete(r.name);
      loadProfile();
    });
    box.append(el("label", {}, input, el("span", {class: "gw-swatch",
      style: `background:${RUN_COLOURS[i % RUN_COLOURS.length]}`}), r.name));
  });
  const last = Math.max(0, ...state.runs.map((r) => r.last_step));
  const slider = document.querySelector("#gw .gw-step");
  slider.max = String(last);
  slider.value = String(state.profileStep === null ? last : state.profileStep);
  document.querySelector("#gw .gw-step-label").textContent = slider.value;
}

// --- the page ------------------------------------------------------------------------------------------------------

function skeleton() {
  document.head.append(el("style", {text: STYLE}));
  let timer = null;
  const slider = el("input", {type: "range", min: "0", max: "0", value: "0", class: "gw-step", style: "width:320px"});
  slider.addEventListener("input", () => {
    document.querySelector("#gw .gw-step-label").textContent = slider.value;
    state.profileStep = Number(slider.value);
    clearTimeout(timer);
    timer = setTimeout(loadProfile, 150);
  });
  const canvas = el("canvas", {class: "gw-map"});
  canvas.addEventListener("mousemove", showTip);
  canvas.addEventListener("mouseleave", () => { document.querySelector("#gw .gw-tip").style.display = "none"; });
  canvas.addEventListener("mousedown", startDrag);
  window.addEventListener("mouseup", endDrag);
  const root = el("div", {id: "gw"},
    el("header", {},
      el("h1", {text: "gradwatch"}),
      el("label", {}, "run ", el("select", {class: "gw-run", onchange: (e) => setRun(e.target.value)})),
      el("label", {}, "metric ", el("select", {class: "gw-metric", onchange: (e) => setMetric(e.target.value)})),
      el("button", {text: "Reset zoom", onclick: () => { state.range = null; loadMap(); }}),
      el("button", {text: "Reload", onclick: () => start()})),
    el("div", {class: "gw-msg"}),
    el("section", {class: "gw-heat"},
      el("h2", {text: "Layers × steps"}),
      el("div", {class: "gw-note gw-heat-note"}),
      el("div", {class: "gw-wrap"}, canvas, el("div", {class: "gw-tip"})),
      el("div", {class: "gw-legend"}),
      el("ol", {class: "gw-rows"})),
    el("section", {class: "gw-episodes"},
      el("h2", {text: "Episodes"}),
      el("div", {class: "gw-note"}),
      el("table", {}, el("thead", {}, el("tr", {}, ...["kind", "layers", "onset", "end", "advice"].map(
        (h) => el("th", {text: h})))), el("tbody"))),
    el("section", {class: "gw-profile"},
      el("h2", {text: "Depth profile"}),
      el("div", {}, "step ", slider, " ", el("b", {class: "gw-step-label", text: "0"}),
        el("span", {class: "gw-note", text: " — each run at its last logged step at or before it; hover a point for its value"})),
      el("div", {class: "gw-runs"}),
      el("div", {class: "gw-wrap"}, svg("svg", {class: "gw-profile-svg"})),
      el("div", {class: "gw-note"})));
  document.body.append(root);
  let resize = null;
  window.addEventListener("resize", () => {
    clearTimeout(resize);
    resize = setTimeout(() => { if (state.map) { drawMap(); } loadProfile(); }, 200);
  });
}

const METRIC_NAMES = {
  grad_rms: "gradient RMS", grad_max: "max |grad|", update_ratio: "update ratio", param_rms: "parameter RMS",
  act_mean: "activation mean", act_std: "activation std", act_zero_frac: "zero activations",
  act_saturated_frac: "saturated activations", act_dead_frac: "dead units", grad_out_norm: "gradient out of module",
};

function fillMetrics() {
  const run = state.runs.find((r) => r.name === state.run);
  const select = document.querySelector("#gw .gw-metric");
  select.textContent = "";
  for (const m of run.metrics) select.append(el("option", {value: m, text: METRIC_NAMES[m] || m}));
  if (!run.metrics.includes(state.metric)) state.metric = run.metrics[0];
  select.value = state.metric;
}

async function setRun(name) {
  state.run = name;
  state.range = null;
  fillMetrics();
  message("");
  await loadEpisodes();
  await loadMap();
}

async function setMetric(key) {
  state.metric = key;
  await loadMap();
  await loadProfile();
}

async function start() {
  message("");
  let data;
  try {
    data = await getJson("runs");
  } catch (e) {
    message(String(e.message || e));
    return;
  }
  state.runs = data.runs;
  state.textSamples = data.text_samples;
  if (!data.runs.length) {
    message(data.message);
    return;
  }
  const params = new URLSearchParams(window.location.search);
  const wanted = params.get("run");
  if (!state.run || !data.runs.some((r) => r.name === state.run)) {
    state.run = data.runs.some((r) => r.name === wanted) ? wanted : data.runs[0].name;
  }
  if (!state.profileRuns.size) data.runs.slice(0, 6).forEach((r) => state.profileRuns.add(r.name));
  const select = document.querySelector("#gw .gw-run");
  select.textContent = "";
  for (const r of data.runs) select.append(el("option", {value: r.name, text: `${r.name} (${r.layers} layers)`}));
  select.value = state.run;
  buildProfileControls();
  await setRun(state.run);
  await loadProfile();
}

export async function render() {
  skeleton();
  await start();
}
