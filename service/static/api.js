// Talking to the onlinenorm API from the dashboard pages.
//
// API key: open a page with ?key=<API key> (or type it when asked). The key is kept in
// this tab's sessionStorage and removed from the address bar; fetch calls send it as
// "Authorization: Bearer <key>", and the event stream (EventSource cannot send
// headers) as ?access_token=<key>, which only the stream endpoint accepts.

const KEY_STORE = "onlinenorm.apiKey";

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

/** Move a ?key= from the address bar into sessionStorage (an empty key forgets it). */
export function takeKeyFromUrl() {
  const url = new URL(window.location.href);
  if (!url.searchParams.has("key")) return;
  const key = url.searchParams.get("key");
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  url.searchParams.delete("key");
  window.history.replaceState(null, "", url.pathname + url.search + url.hash);
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORE);
}

export function setApiKey(key) {
  sessionStorage.setItem(KEY_STORE, key);
}

/** GET a JSON resource of the API; throws ApiError with the server's detail. */
export async function getJSON(path) {
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { headers, cache: "no-store" });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).detail || detail;
    } catch {
      // not JSON: keep the status text
    }
    throw new ApiError(response.status, detail);
  }
  return response.json();
}

/** The event stream's URL, with the key as access_token when there is one. */
export function streamUrl(path, params = {}) {
  const query = new URLSearchParams(params);
  const key = apiKey();
  if (key) query.set("access_token", key);
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** Ask for an API key in `container`; reloads the page once one is given. */
export function askForKey(container, message) {
  container.hidden = false;
  container.replaceChildren();
  const form = document.createElement("form");
  form.className = "key-form";
  const text = document.createElement("p");
  text.textContent = message;
  const input = document.createElement("input");
  input.type = "password";
  input.name = "key";
  input.placeholder = "API key";
  input.autocomplete = "off";
  input.required = true;
  const button = document.createElement("button");
  button.type = "submit";
  button.textContent = "Use key";
  form.append(text, input, button);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    window.location.reload();
  });
  container.append(form);
  input.focus();
}

/** A short, readable number: 0.0123, 12.3, 1.23e5. */
export function fmt(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const a = Math.abs(value);
  if (a === 0) return "0";
  if (a >= 1e5 || a < 1e-3) return value.toExponential(2);
  if (a >= 100) return value.toFixed(0);
  return value.toPrecision(3);
}

/** "3 s ago", "2 min ago". */
export function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
