/* flywheel dashboard: DOM helpers, number formats and inline SVG charts (no library).
   Every chart has a text title and an accessible label; series differ by line style as well as colour. */
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

/** An HTML element: h("td", {class: "num"}, "1.2%"); text children are escaped by the DOM. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An SVG element. */
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const fmt = {
  pct: (x, d = 2) => (x === null || x === undefined || !isFinite(x) ? "n/a" : (x * 100).toFixed(d) + "%"),
  num: (x, d = 2) => (x === null || x === undefined || !isFinite(x) ? "n/a" : Number(x).toFixed(d)),
  int: (x) => (x === null || x === undefined ? "n/a" : String(Math.round(x))),
  ci: (ci, d = 2) => (ci ? "[" + fmt.pct(ci[0], d) + ", " + fmt.pct(ci[1], d) + "]" : "n/a"),
  time: (iso) => (iso ? new Date(iso).toLocaleString() : "n/a"),
  short: (version) => (version ? String(version).replace(/([0-9a-f]{12})[0-9a-f]{52}/, "$1…") : "none"),
};

const PALETTE = ["#0a58ca", "#b42318", "#1a7f37", "#8a5a00"];
const DASHES = ["", "6 4", "2 3", "10 3 2 3"];

function chartFrame(width, height, label) {
  return s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label },
    s("title", {}, label));
}

/** Forest plot: one row per metric, point estimate, fixed interval (thick) and always-valid interval (thin, dashed). */
function forestPlot(rows, label) {
  const width = 640, rowH = 28, left = 170, right = 20, top = 24;
  const height = top + rows.length * rowH + 28;
  const ends = rows.flatMap((r) => [r.lo, r.hi, r.slo, r.shi, r.est]).filter((v) => v !== null && isFinite(v));
  let span = Math.max(0.01, ...ends.map(Math.abs)) * 1.1;
  const x = (v) => left + ((Math.max(-span, Math.min(span, v)) + span) / (2 * span)) * (width - left - right);
  const svg = chartFrame(width, height, label);
  svg.append(s("line", { x1: x(0), x2: x(0), y1: top - 8, y2: height - 22, stroke: "#57606a", "stroke-dasharray": "3 3" }));
  for (const v of [-span, 0, span]) {
    svg.append(s("text", { x: x(v), y: height - 6, "text-anchor": "middle" }, fmt.pct(v, 1)));
  }
  rows.forEach((r, i) => {
    const y = top + i * rowH + rowH / 2;
    const g = s("g", {}, s("title", {}, `${r.name}: ${fmt.pct(r.est)} ${fmt.ci([r.lo, r.hi])}`));
    g.append(s("text", { x: 4, y: y + 4 }, r.name));
    if (r.slo !== null && r.shi !== null && isFinite(r.slo) && isFinite(r.shi)) {
      g.append(s("line", { x1: x(r.slo), x2: x(r.shi), y1: y + 6, y2: y + 6, stroke: PALETTE[1], "stroke-dasharray": DASHES[1], "stroke-width": 2 }));
    }
    if (r.lo !== null && r.hi !== null) {
      g.append(s("line", { x1: x(r.lo), x2: x(r.hi), y1: y, y2: y, stroke: PALETTE[0], "stroke-width": 4 }));
    }
    if (r.est !== null) g.append(s("rect", { x: x(r.est) - 5, y: y - 5, width: 10, height: 10, fill: "#1b1f24" }));
    svg.append(g);
  });
  svg.append(s("text", { x: left, y: 14 }, "relative lift of the challenger (worse ← 0 → better depends on the metric)"));
  return svg;
}

/** Lines over time: series [{name, points: [{t, y, lo?, hi?}]}]; y formatted with yFmt; optional band per series. */
function lineChart(series, label, yFmt = (v) => fmt.pct(v, 0)) {
  const width = 640, height = 230, left = 60, right = 16, top = 14, bottom = 30;
  const all = series.flatMap((sr) => sr.points);
  const svg = chartFrame(width, height, label);
  if (!all.length) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no data yet"));
    return svg;
  }
  const ts = all.map((p) => Date.parse(p.t));
  const ys = all.flatMap((p) => [p.y, p.lo, p.hi]).filter((v) => v !== null && v !== undefined && isFinite(v));
  const t0 = Math.min(...ts), t1 = Math.max(...ts) || t0 + 1;
  let y0 = Math.min(0, ...ys), y1 = Math.max(...ys, y0 + 1e-9);
  const x = (t) => left + (t1 === t0 ? 0.5 : (Date.parse(t) - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => top + (1 - (v - y0) / (y1 - y0)) * (height - top - bottom);
  svg.append(s("line", { x1: left, x2: width - right, y1: y(y0), y2: y(y0), stroke: "#d0d7de" }));
  for (const v of [y0, (y0 + y1) / 2, y1]) svg.append(s("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, yFmt(v)));
  svg.append(s("text", { x: left, y: height - 8 }, new Date(t0).toLocaleString()));
  svg.append(s("text", { x: width - right, y: height - 8, "text-anchor": "end" }, new Date(t1).toLocaleString()));
  series.forEach((sr, i) => {
    const pts = sr.points.filter((p) => p.y !== null && p.y !== undefined && isFinite(p.y));
    const band = pts.filter((p) => p.lo !== null && p.lo !== undefined && p.hi !== null && p.hi !== undefined);
    if (band.length > 1) {
      const d = band.map((p) => `${x(p.t)},${y(p.hi)}`).concat(band.slice().reverse().map((p) => `${x(p.t)},${y(p.lo)}`));
      svg.append(s("polygon", { points: d.join(" "), fill: PALETTE[i % 4], "fill-opacity": 0.15 }));
    }
    const line = pts.map((p) => `${x(p.t)},${y(p.y)}`).join(" ");
    svg.append(s("polyline", { points: line, fill: "none", stroke: PALETTE[i % 4], "stroke-width": 2, "stroke-dasharray": DASHES[i % 4] }));
    for (const p of pts) {
      svg.append(s("circle", { cx: x(p.t), cy: y(p.y), r: 3, fill: PALETTE[i % 4] },
        s("title", {}, `${sr.name} ${fmt.time(p.t)}: ${yFmt(p.y)}`)));
    }
  });
  return svg;
}

/** A legend naming each series with its line style. */
// One value per optimizer step (a training loss curve): x is the step, 1 to n.
function curveChart(values, label, yFmt) {
  const width = 640, height = 200, left = 60, right = 16, top = 14, bottom = 30;
  const svg = chartFrame(width, height, label);
  const ys = values.filter((v) => v !== null && isFinite(v));
  if (ys.length < 2) return svg;
  const y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
  const x = (i) => left + (i / (values.length - 1)) * (width - left - right);
  const y = (v) => top + (1 - (v - y0) / (y1 - y0)) * (height - top - bottom);
  for (const v of [y0, y1]) svg.append(s("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, yFmt(v)));
  svg.append(s("text", { x: left, y: height - 8 }, "step 1"));
  svg.append(s("text", { x: width - right, y: height - 8, "text-anchor": "end" }, `step ${values.length}`));
  const line = values.map((v, i) => `${x(i)},${y(v)}`).join(" ");
  svg.append(s("polyline", { points: line, fill: "none", stroke: PALETTE[0], "stroke-width": 2 }));
  return svg;
}

function legend(names) {
  return h("div", { class: "legend" }, names.map((name, i) => h("span", {},
    (() => { const sw = s("svg", { width: 28, height: 10, "aria-hidden": "true" });
      sw.append(s("line", { x1: 0, x2: 28, y1: 5, y2: 5, stroke: PALETTE[i % 4], "stroke-width": 3, "stroke-dasharray": DASHES[i % 4] }));
      return sw; })(), " ", name)));
}

/** The registry's lineage: generations left to right, parent → child arrows, deployed versions marked. */
function lineageGraph(versions, label) {
  const depth = {};
  const byId = Object.fromEntries(versions.map((v) => [v.version, v]));
  const depthOf = (v, seen = 0) => (v.parent && byId[v.parent] && seen < 100 ? depthOf(byId[v.parent], seen + 1) + 1 : 0);
  const columns = {};
  for (const v of versions) { depth[v.version] = depthOf(v); (columns[depth[v.version]] ||= []).push(v); }
  const colW = 190, rowH = 62, width = Math.max(640, (Object.keys(columns).length) * colW + 20);
  const rows = Math.max(1, ...Object.values(columns).map((c) => c.length));
  const svg = chartFrame(width, rows * rowH + 20, label);
  svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto" },
    s("path", { d: "M0,0 L10,5 L0,10 z", fill: "#57606a" }))));
  const pos = {};
  for (const [d, col] of Object.entries(columns)) col.forEach((v, i) => { pos[v.version] = { x: 10 + d * colW, y: 10 + i * rowH }; });
  for (const v of versions) {
    if (!v.parent || !pos[v.parent]) continue;
    const a = pos[v.parent], b = pos[v.version];
    svg.append(s("line", { x1: a.x + 150, y1: a.y + 22, x2: b.x, y2: b.y + 22, stroke: "#57606a", "marker-end": "url(#arrow)" }));
  }
  for (const v of versions) {
    const p = pos[v.version];
    const mark = v.deployed ? ` ★ ${v.deployed}` : "";
    svg.append(s("g", {}, s("title", {}, `${v.version} (${v.state})${mark}`),
      s("rect", { x: p.x, y: p.y, width: 150, height: 44, rx: 6, fill: v.deployed ? "#fff8e1" : "#f6f8fa", stroke: v.deployed ? "#8a5a00" : "#d0d7de", "stroke-width": v.deployed ? 3 : 1 }),
      s("text", { x: p.x + 8, y: p.y + 18 }, v.version.slice(0, 12)),
      s("text", { x: p.x + 8, y: p.y + 36 }, v.state + mark)));
  }
  return svg;
}
