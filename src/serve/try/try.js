// The "try it" page: publishes one message, or a batch, through the bridge's API from the browser.
// Served by the admin listener under a CSP without inline script, so all behaviour lives here.
"use strict";

// Not `$`: that would hide the DevTools console's own `$(selector)` from anyone driving this page.
const byId = (id) => document.getElementById(id);

// The server substitutes both metas; a page served without substitution leaves the URL to the user.
function defaultApiBase() {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";
  const port = meta("api-port");
  const scheme = meta("api-scheme");
  if (!/^\d+$/.test(port) || !/^https?$/.test(scheme)) return "";
  return `${scheme}://${location.hostname}:${port}`; // hostname keeps an IPv6 address's brackets
}

// An input the page refuses to send; shown as is, never as a network error.
class InputError extends Error {}

// One `key=value` a line, split at the first `=`, in order: UserProp.1, UserProp.2, ...
// Blank lines are skipped; keys and values are kept as typed (spaces included).
function userProperties(text) {
  return text.split(/\r?\n/).filter((line) => line.trim() !== "").map((line, i) => {
    const eq = line.indexOf("=");
    if (eq < 0) throw new InputError(`user property ${i + 1} ("${line}") has no "="; write key=value`);
    return [line.slice(0, eq), line.slice(eq + 1)];
  });
}

// The API base URL as typed, checked: http: or https:, no trailing slash in its path.
function apiRoot(base) {
  let root;
  try {
    root = new URL(base.trim());
  } catch {
    throw new InputError(`"${base}" is not a URL; write e.g. http://host:port`);
  }
  if (!/^https?:$/.test(root.protocol)) throw new InputError("the API base URL must be http: or https:");
  return root;
}

function publishUrl(base, topic, qos, retained, props) {
  const root = apiRoot(base);
  const query = new URLSearchParams({ qos, retained: String(retained) });
  props.forEach(([key, value], i) => {
    query.append(`UserProp.${i + 1}.Key`, key);
    query.append(`UserProp.${i + 1}.Value`, value);
  });
  // encodeURIComponent turns `/` into `%2F`: the server splits levels on either.
  const path = root.pathname.replace(/\/+$/, "") + "/topics/" + encodeURIComponent(topic);
  return `${root.origin}${path}?${query}`;
}

// btoa only takes code points below 256, so encode to UTF-8 bytes first.
function basicAuth(username, password) {
  if (username.includes(":")) throw new InputError("a Basic username cannot contain \":\"");
  const bytes = new TextEncoder().encode(`${username}:${password}`);
  return "Basic " + btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""));
}

function prettyBody(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text; // empty or not JSON: show it as it came
  }
}

// The single publish's request, from the first form.
function singleRequest() {
  const url = publishUrl(byId("api").value, byId("topic").value, byId("qos").value,
    byId("retain").checked, userProperties(byId("props").value));
  return { url, contentType: "text/plain; charset=utf-8", body: byId("body").value };
}

// The batch's request: the array as typed, checked to be JSON before it is sent.
function batchRequest() {
  const root = apiRoot(byId("api").value);
  const body = byId("batch").value;
  try {
    JSON.parse(body);
  } catch (err) {
    throw new InputError(`the messages are not JSON: ${err.message}`);
  }
  return { url: `${root.origin}${root.pathname.replace(/\/+$/, "")}/messages`, contentType: "application/json", body };
}

async function send(event, request) {
  event.preventDefault(); // the CSP forbids form submission; fetch does the work
  const status = byId("status");
  document.body.dataset.state = "sending";
  status.textContent = "sending…";
  byId("message-id").textContent = "";
  byId("answer").textContent = "";
  byId("send").disabled = byId("send-batch").disabled = true;
  try {
    const { url, contentType, body } = request();
    const headers = { "Content-Type": contentType };
    const [user, password] = [byId("username").value, byId("password").value];
    // With neither given, send no header, so the server answers missing_credentials.
    if (user !== "" || password !== "") headers.Authorization = basicAuth(user, password);

    let response;
    try {
      response = await fetch(url, {
        method: "POST", headers, body, credentials: "omit", mode: "cors",
      });
    } catch (err) {
      throw new Error(`network error: ${err.message}. Either the server could not be reached, or ` +
        `it answered without allowing this page's origin and the browser blocked the answer (CORS): ` +
        `the server's [cors] allowed_origins must list ${location.origin}`);
    }
    const retryAfter = response.headers.get("Retry-After");
    status.textContent = `${response.status} ${response.statusText}`.trim() +
      (retryAfter ? ` (Retry-After: ${retryAfter})` : "");
    byId("message-id").textContent = response.headers.get("X-Message-Id") || "";
    byId("answer").textContent = prettyBody(await response.text());
    document.body.dataset.state = "done";
  } catch (err) {
    status.textContent = err instanceof InputError ? `input error: ${err.message}` : err.message;
    document.body.dataset.state = "failed";
  } finally {
    byId("send").disabled = byId("send-batch").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  byId("api").value = defaultApiBase();
  byId("try-form").addEventListener("submit", (event) => send(event, singleRequest));
  byId("batch-form").addEventListener("submit", (event) => send(event, batchRequest));
});
