// The model picker: lists the models from GET /v1/models, refreshed every few seconds.
import { ApiError, ago, askForKey, getJSON, takeKeyFromUrl } from "./api.js";

const REFRESH_MS = 5000;
let timer = null;

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function normText(norm) {
  if (norm.kind !== "online") return norm.kind;
  return `online (ecm ${norm.ecm ?? "none"})`;
}

function row(model) {
  const tr = document.createElement("tr");
  const name = document.createElement("td");
  const link = document.createElement("a");
  link.href = `/dashboard/${encodeURIComponent(model.name)}`;
  link.textContent = model.name;
  name.append(link);
  const spec = model.spec;
  const updated = model.updated_at ? Date.parse(model.updated_at) / 1000 : null;
  tr.append(
    name,
    cell(spec.task),
    cell(spec.network.kind),
    cell(normText(spec.norm)),
    cell(String(model.step), "num"),
    cell(String(model.layers.length), "num"),
    cell(ago(updated)),
  );
  return tr;
}

async function refresh() {
  const notice = document.getElementById("notice");
  try {
    const { models } = await getJSON("/v1/models");
    notice.hidden = true;
    document.querySelector("#models tbody").replaceChildren(...models.map(row));
    document.getElementById("empty").hidden = models.length > 0;
    window.onlinenormPicker = { models: models.map((m) => m.name) };
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      clearInterval(timer);
      askForKey(notice, `This service needs an API key (${error.detail}).`);
      return false;
    }
    notice.hidden = false;
    notice.textContent = `Could not list the models: ${error.message}`;
  }
  return true;
}

takeKeyFromUrl();
if (await refresh()) timer = setInterval(refresh, REFRESH_MS);
