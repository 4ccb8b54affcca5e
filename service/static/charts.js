// Drawing for the dashboard: uPlot line charts over steps, and per-channel heat strips.
/* global uPlot */
import { fmt } from "./api.js";

export const MAX_POINTS = 5000; // per chart: older points scroll out
export const COLORS = ["#2563eb", "#ea580c", "#059669", "#9333ea"];
const AXIS = {
  stroke: "#64748b",
  font: "11px system-ui, sans-serif",
  grid: { stroke: "#eef1f5", width: 1 },
  ticks: { stroke: "#e2e8f0", width: 1, size: 4 },
};

const dirty = new Set();
let frame = 0;

function redrawDirty() {
  frame = 0;
  for (const chart of dirty) chart.redraw();
  dirty.clear();
}

function stepLabel(value, digits) {
  if (value >= 1e6) return `${+(value / 1e6).toFixed(digits)}M`;
  if (value >= 1e3) return `${+(value / 1e3).toFixed(digits)}k`;
  return String(value);
}

/** Step ticks as short labels, with as many decimals as it takes for no two to read the
 *  same (ticks 1,100 1,120 1,140 are 1.1k 1.12k 1.14k, not 1.1k three times). */
export function stepLabels(ticks) {
  for (let digits = 1; digits <= 3; digits++) {
    const labels = ticks.map((t) => stepLabel(t, digits));
    if (new Set(labels).size === labels.length) return labels;
  }
  return ticks.map((t) => String(t));
}

/** The y range: uPlot's padded range, and a visible band for a flat line (u and v of an
 *  input layer stay 0). */
function yRange(u, min, max) {
  if (min === null || max === null) return [0, 1];
  if (min === max) {
    const pad = Math.abs(min) * 0.1 || 1;
    return [min - pad, max + pad];
  }
  return uPlot.rangeNum(min, max, 0.1, true);
}

/** A line chart of a few series against the step, appended to point by point. */
export class LineChart {
  constructor(container, { title, series, height = 160, reference = null }) {
    this.xs = [];
    this.ys = series.map(() => []);
    this.reference = reference;
    const figure = document.createElement("figure");
    figure.className = "chart";
    const caption = document.createElement("figcaption");
    caption.textContent = title;
    const holder = document.createElement("div");
    figure.append(caption, holder);
    container.append(figure);
    const lines = series.map((s, i) => ({
      label: s.label,
      stroke: s.color || COLORS[i % COLORS.length],
      width: 1.5,
      points: { show: false },
      value: (u, v) => fmt(v),
    }));
    if (reference !== null) {
      lines.push({
        label: reference.label,
        stroke: "#94a3b8",
        width: 1,
        dash: [4, 4],
        points: { show: false },
        value: (u, v) => fmt(v),
      });
    }
    const options = {
      width: Math.max(200, holder.clientWidth || 300),
      height,
      scales: { x: { time: false }, y: { range: yRange } },
      series: [{ label: "step", value: (u, v) => (v === null || v === undefined ? "–" : String(v)) }, ...lines],
      axes: [
        { ...AXIS, size: 26, values: (u, ticks) => stepLabels(ticks) },
        { ...AXIS, size: 54, values: (u, ticks) => ticks.map(fmt) },
      ],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
    };
    this.plot = new uPlot(options, this.data(), holder);
    new ResizeObserver(() => {
      const width = holder.clientWidth;
      if (width > 0 && width !== this.plot.width) this.plot.setSize({ width, height });
    }).observe(holder);
  }

  data() {
    const out = [this.xs, ...this.ys];
    if (this.reference !== null) out.push(this.xs.map(() => this.reference.value));
    return out;
  }

  /** Add the values at `step`; a step that went back (a recreated model) starts over. */
  push(step, values) {
    const last = this.xs.length ? this.xs[this.xs.length - 1] : -Infinity;
    if (step < last) this.clear();
    if (step === last) {
      this.ys.forEach((ys, i) => (ys[ys.length - 1] = values[i] ?? null));
    } else {
      this.xs.push(step);
      this.ys.forEach((ys, i) => ys.push(values[i] ?? null));
    }
    if (this.xs.length > MAX_POINTS) {
      this.xs.splice(0, this.xs.length - MAX_POINTS);
      this.ys.forEach((ys) => ys.splice(0, ys.length - MAX_POINTS));
    }
    dirty.add(this);
    if (!frame) frame = requestAnimationFrame(redrawDirty);
  }

  clear() {
    this.xs.length = 0;
    this.ys.forEach((ys) => (ys.length = 0));
  }

  redraw() {
    this.plot.setData(this.data());
    // Away from the cursor, the legend shows the latest values.
    if (this.xs.length && this.plot.cursor.left < 0) this.plot.setLegend({ idx: this.xs.length - 1 });
  }
}

function mix(a, b, t) {
  const pa = [1, 3, 5].map((i) => parseInt(a.slice(i, i + 2), 16));
  const pb = [1, 3, 5].map((i) => parseInt(b.slice(i, i + 2), 16));
  return `rgb(${pa.map((x, i) => Math.round(x + (pb[i] - x) * t)).join(",")})`;
}

function ramp(stops, t) {
  const x = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  return mix(stops[i], stops[i + 1], x - i);
}

const DIVERGING = ["#2563eb", "#f8fafc", "#dc2626"];
const SEQUENTIAL = ["#f1f5f9", "#a5b4fc", "#6366f1", "#4338ca", "#1e1b4b"];

/** One value per channel as a row of colored cells; hover reads a channel out.
 *  `scale`: "diverging" (around 0, for mu) or "log" (positive values, for var). */
export class HeatStrip {
  constructor(container, label, scale) {
    this.scale = scale;
    this.values = [];
    const row = document.createElement("div");
    row.className = "strip";
    const name = document.createElement("span");
    name.className = "strip-label";
    name.textContent = label;
    name.title = scale === "diverging" ? "blue below 0, red above" : "light to dark: small to large (log scale)";
    this.canvas = document.createElement("canvas");
    this.readout = document.createElement("span");
    this.readout.className = "strip-readout";
    row.append(name, this.canvas, this.readout);
    container.append(row);
    this.canvas.addEventListener("mousemove", (event) => this.hover(event));
    this.canvas.addEventListener("mouseleave", () => this.showRange());
    new ResizeObserver(() => this.draw()).observe(this.canvas);
  }

  update(values) {
    this.values = values;
    this.draw();
    this.showRange();
  }

  color(value, lo, hi) {
    if (this.scale === "diverging") {
      const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
      return ramp(DIVERGING, (value / m + 1) / 2);
    }
    const l = Math.log10(Math.max(value, 1e-12));
    const [a, b] = [Math.log10(Math.max(lo, 1e-12)), Math.log10(Math.max(hi, 1e-12))];
    return ramp(SEQUENTIAL, b > a ? (l - a) / (b - a) : 0.5);
  }

  draw() {
    const width = this.canvas.clientWidth;
    const height = this.canvas.clientHeight;
    if (!width || !height) return;
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(width * ratio);
    this.canvas.height = Math.round(height * ratio);
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const n = this.values.length;
    if (!n) return;
    const lo = Math.min(...this.values);
    const hi = Math.max(...this.values);
    const cell = width / n;
    this.values.forEach((v, i) => {
      ctx.fillStyle = this.color(v, lo, hi);
      ctx.fillRect(Math.floor(i * cell), 0, Math.ceil(cell), height);
    });
  }

  showRange() {
    const n = this.values.length;
    this.readout.textContent = n ? `${fmt(Math.min(...this.values))} … ${fmt(Math.max(...this.values))}` : "";
  }

  hover(event) {
    const n = this.values.length;
    if (!n) return;
    const rect = this.canvas.getBoundingClientRect();
    const i = Math.min(n - 1, Math.max(0, Math.floor(((event.clientX - rect.left) / rect.width) * n)));
    this.readout.textContent = `channel ${i}: ${fmt(this.values[i])}`;
  }
}
