// One model's live dashboard: the first points from the stats history, then one point
// per published update from the event stream (EventSource), and the per-channel mu and
// var of the current step from GET stats (at most once a second). With ?static=1 the
// page renders once and opens no stream (headless `chromium --screenshot` waits for the
// network to go quiet, which an open stream never does).
import { ApiError, ago, askForKey, getJSON, streamUrl, takeKeyFromUrl } from "./api.js";
import { HeatStrip, LineChart } from "./charts.js";

const HISTORY_POINTS = 2000;
const STATS_EVERY_MS = 1000;
const RECONNECT_MS = 5000;
// No update for this many publish gaps (and at least IDLE_MIN_MS): the model is idle.
const IDLE_GAPS = 3;
const IDLE_MIN_MS = 3000;
// The standardizer of raw inputs: nothing learns below it, so no gradient reaches it and
// its control processes (u, v) stay 0.
const INPUT_LAYER = "input_norm";
const STATIC = new URLSearchParams(window.location.search).get("static") === "1";

// For tests and curious users: what arrived, and the uPlot instances by id.
const state = {
  status: "connecting",
  historyEntries: 0,
  events: 0,
  statsFetches: 0,
  lastEventId: null,
  empty: false,
  static: STATIC,
  charts: {},
};
window.onlinenormDashboard = state;

const $ = (id) => document.getElementById(id);
const name = decodeURIComponent(window.location.pathname.replace(/\/+$/, "").split("/").pop());
const base = `/v1/models/${encodeURIComponent(name)}`;
const layerViews = new Map();
let perf = null;
let facts = { step: null, time: null, rate: null, gap: null };
let statsTimer = null;
let lastStatsFetch = 0;

function chart(id, container, options) {
  const c = new LineChart(container, options);
  state.charts[id] = c.plot;
  return c;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function normText(norm) {
  return norm.kind === "online" ? `online, ecm ${norm.ecm ?? "none"}` : norm.kind;
}

function buildPerformance(task) {
  const box = $("performance");
  const score = task === "classification" ? ["accuracy", "Accuracy"] : ["mae", "Mean absolute error"];
  const series = [{ label: "recent (EWM)" }, { label: "mean since start" }];
  perf = {
    score: score[0],
    loss: chart("loss", box, { title: "Loss", series, height: 180 }),
    scoreChart: chart(score[0], box, { title: score[1], series, height: 180 }),
  };
}

function ecmChart(layer, box) {
  const id = `${layer.name}/ecm`;
  if (layer.name === INPUT_LAYER && !layer.ecm) return null;
  if (layer.ecm === "ls") {
    return chart(id, box, {
      title: "RMS before layer scaling",
      series: [{ label: "RMS" }],
      reference: { label: "healthy", value: 1 },
    });
  }
  if (layer.ecm === "ac") {
    return chart(id, box, { title: "Fraction of activations clamped", series: [{ label: "clamped" }] });
  }
  return chart(id, box, { title: "Control processes", series: [{ label: "max |u|" }, { label: "max |v|" }] });
}

function describe(layer) {
  if (layer.name === INPUT_LAYER && !layer.ecm) {
    return (
      `${layer.num_features} channels · standardizes the raw inputs · α fwd ${layer.alpha_fwd} · ` +
      `${layer.samples_tracked} samples tracked · no control-process chart: no gradient reaches ` +
      "the inputs, so u and v stay 0"
    );
  }
  return (
    `${layer.num_features} channels · ecm ${layer.ecm ?? "none"} · ` +
    `α fwd ${layer.alpha_fwd} / bkw ${layer.alpha_bkw} · ${layer.samples_tracked} samples tracked`
  );
}

function buildLayer(layer) {
  const section = element("section", "panel layer");
  const head = element("div", "panel-head");
  const meta = element("span", "hint", describe(layer));
  head.append(element("h2", "", layer.name), meta);
  const grid = element("div", "grid three");
  const strips = element("div", "strips");
  section.append(head, grid, strips);
  $("layers").append(section);
  const series = [{ label: "mean" }, { label: "std" }];
  layerViews.set(layer.name, {
    ecm: layer.ecm,
    meta,
    mu: chart(`${layer.name}/mu`, grid, { title: "μ, running mean · over channels", series }),
    std: chart(`${layer.name}/std`, grid, { title: "σ = √(var + ε) · over channels", series }),
    ecmChart: ecmChart(layer, grid),
    muStrip: new HeatStrip(strips, "μ per channel", "diverging"),
    varStrip: new HeatStrip(strips, "var per channel", "log"),
  });
}

function addEntry(entry) {
  const m = entry.metrics;
  if (m && perf) {
    perf.loss.push(entry.step, [m.loss_ewm, m.loss]);
    perf.scoreChart.push(entry.step, [m[`${perf.score}_ewm`], m[perf.score]]);
  }
  for (const point of entry.layers) {
    const view = layerViews.get(point.name);
    if (!view) continue;
    view.mu.push(entry.step, [point.mu_mean, point.mu_spread]);
    view.std.push(entry.step, [point.std_mean, point.std_spread]);
    if (!view.ecmChart) continue;
    if (view.ecm === "ls") view.ecmChart.push(entry.step, [point.ls_rms]);
    else if (view.ecm === "ac") view.ecmChart.push(entry.step, [point.clamped_fraction]);
    else view.ecmChart.push(entry.step, [point.u_abs_max, point.v_abs_max]);
  }
  if (facts.step !== null && entry.time && facts.time && entry.time > facts.time) {
    const gap = entry.time - facts.time;
    const rate = (entry.step - facts.step) / gap;
    facts.rate = facts.rate === null ? rate : 0.7 * facts.rate + 0.3 * rate;
    facts.gap = facts.gap === null ? gap : 0.7 * facts.gap + 0.3 * gap;
  }
  facts = { ...facts, step: entry.step, time: entry.time };
  if (state.empty) {
    state.empty = false;
    $("empty").hidden = true;
    setStatus(state.status);
  }
  showFacts();
}

/** samples/s now: the recent rate while updates keep coming; 0 once none came for a few
 *  publish gaps (the writer publishes only when steps were taken: silence is idleness). */
export function currentRate(f, nowSeconds) {
  if (f.rate === null || !f.time) return f.rate;
  const idleAfter = Math.max(IDLE_MIN_MS / 1000, IDLE_GAPS * (f.gap ?? 0));
  return nowSeconds - f.time > idleAfter ? 0 : f.rate;
}

function showFacts() {
  const rate = currentRate(facts, Date.now() / 1000);
  $("step").textContent = facts.step === null ? "–" : String(facts.step);
  $("rate").textContent = rate === null ? "–" : rate.toFixed(rate < 10 && rate > 0 ? 1 : 0);
  $("age").textContent = facts.time ? ago(facts.time) : "never";
}

function showStrips(stats) {
  for (const layer of stats.layers) {
    const view = layerViews.get(layer.name);
    if (!view) continue;
    view.muStrip.update(layer.mu);
    view.varStrip.update(layer.var);
    view.meta.textContent = describe(layer);
  }
}

async function refreshStats() {
  statsTimer = null;
  lastStatsFetch = Date.now();
  try {
    showStrips(await getJSON(`${base}/stats`));
    state.statsFetches += 1;
  } catch {
    // the stream's status tells when the service is gone
  }
}

function scheduleStats() {
  if (statsTimer !== null) return;
  statsTimer = setTimeout(refreshStats, Math.max(0, lastStatsFetch + STATS_EVERY_MS - Date.now()));
}

function setStatus(status) {
  state.status = status;
  const node = $("live");
  const waiting = state.empty && (status === "live" || status === "static");
  node.textContent = waiting ? "no samples yet" : status === "static" ? "snapshot" : status;
  node.className = `status ${waiting ? "empty" : status}`;
}

function notice(text) {
  const box = $("notice");
  box.hidden = false;
  box.replaceChildren(element("p", "", text));
  const back = element("a", "", "All models");
  back.href = "/dashboard";
  box.append(back);
}

function fail(error) {
  if (error instanceof ApiError && error.status === 404) {
    setStatus("not found");
    $("live").className = "status offline";
    for (const panel of document.querySelectorAll("main > .panel, #layers")) panel.hidden = true;
    notice(`No model named “${name}” exists on this service (deleted, or never created).`);
    return;
  }
  setStatus("offline");
  if (error instanceof ApiError && error.status === 401) {
    askForKey($("notice"), `This service needs an API key (${error.detail}).`);
  } else {
    notice(`Could not load the model: ${error.message}`);
  }
}

function connect(after) {
  const source = new EventSource(streamUrl(`${base}/stats/stream`, { after }));
  source.addEventListener("open", () => setStatus("live"));
  source.addEventListener("stats", (event) => {
    state.events += 1;
    state.lastEventId = event.lastEventId;
    addEntry(JSON.parse(event.data));
    scheduleStats();
  });
  source.addEventListener("error", () => {
    if (source.readyState !== EventSource.CLOSED) {
      setStatus("reconnecting"); // EventSource retries by itself, sending Last-Event-ID
      return;
    }
    // Refused (an HTTP error): find out why, then resume after the last entry seen.
    setStatus("offline");
    setTimeout(async () => {
      try {
        await getJSON(base);
        connect(state.lastEventId || after);
      } catch (error) {
        if (error instanceof ApiError) fail(error);
        else connect(state.lastEventId || after);
      }
    }, RECONNECT_MS);
  });
}

async function main() {
  takeKeyFromUrl();
  $("model-name").textContent = name;
  document.title = `onlinenorm · ${name}`;
  let info, stats, history;
  try {
    info = await getJSON(base);
    stats = await getJSON(`${base}/stats`);
    history = await getJSON(`${base}/stats/history?limit=${HISTORY_POINTS}`);
  } catch (error) {
    fail(error);
    return;
  }
  const spec = info.spec;
  $("model-kind").textContent = `${spec.task} · ${spec.network.kind} · ${normText(spec.norm)}`;
  buildPerformance(spec.task);
  if (!stats.layers.length) {
    $("layers").append(element("p", "hint", "This model has no Online Normalization layers."));
  }
  stats.layers.forEach(buildLayer);
  showStrips(stats);
  if (!history.entries.length && !info.step) {
    state.empty = true;
    $("empty").hidden = false;
  }
  history.entries.forEach(addEntry);
  state.historyEntries = history.entries.length;
  if (facts.step === null) {
    facts.step = info.step ?? stats.step ?? 0;
    showFacts();
  }
  if (STATIC) {
    setStatus("static"); // rendered once, as of now: nothing stays open
    return;
  }
  const last = history.entries.at(-1);
  // After the last entry shown (or from the stream's start): no update is missed in between.
  connect(last ? last.id : "0-0");
  setInterval(showFacts, 1000);
}

main();
