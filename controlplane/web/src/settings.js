// Settings: notifiers (add, test, remove), the allowlist and the watchlist. Viewers see them;
// admins change them.
import { html } from "htm/preact";
import { useEffect, useState } from "preact/hooks";
import { api, get } from "./api.js";
import { count } from "./format.js";

function useList(path) {
  const [items, setItems] = useState(null);
  const [error, setError] = useState(null);
  const reload = () =>
    get(path)
      .then((v) => {
        setItems(v);
        setError(null);
      })
      .catch((e) => setError(e.message));
  useEffect(() => {
    reload();
  }, [path]);
  return [items, error, reload, setError];
}

function target(f) {
  const kind = f.get("kind");
  if (kind === "webhook") {
    const t = { kind, url: f.get("url") };
    if (f.get("secret")) t.secret = f.get("secret");
    return t;
  }
  if (kind === "slack") return { kind, url: f.get("url") };
  if (kind === "webex") {
    const t = { kind, token: f.get("token"), room_id: f.get("room_id") };
    if (f.get("api_url")) t.api_url = f.get("api_url");
    return t;
  }
  return {
    kind,
    address: f.get("address"),
    transport: f.get("transport"),
    facility: Number(f.get("facility")),
    cef: f.get("cef") === "on",
  };
}

function Notifiers({ admin }) {
  const [v, error, reload, setError] = useList("/api/v1/notifiers");
  const [kind, setKind] = useState("webhook");
  const [msg, setMsg] = useState(null);
  async function add(e) {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      await api("POST", "/api/v1/notifiers", {
        name: f.get("name"),
        min_severity: f.get("min_severity"),
        target: target(f),
      });
      e.target.reset();
      setKind("webhook");
      setMsg(`added ${f.get("name")}`);
      reload();
    } catch (err) {
      setError(err.message);
    }
  }
  async function act(method, path, done) {
    try {
      const r = await api(method, path);
      setMsg(done(r));
      setError(null);
      reload();
    } catch (err) {
      setError(err.message);
    }
  }
  return html`<div class="panel notifiers">
    <h2>Notifiers</h2>
    <p class="hint">
      One message per new alert and per meaningful change (higher severity, targets reaching 100,
      1,000, ...), retried with backoff; what still fails is counted.
    </p>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${msg && html`<p class="ok" role="status">${msg}</p>`}
    <table>
      <thead>
        <tr><th>Name</th><th>Kind</th><th>Destination</th><th>Min severity</th><th>Delivered</th><th>Pending</th><th>Failed</th><th></th></tr>
      </thead>
      <tbody>
        ${(v ? v.notifiers : []).map(
          (n) => html`<tr data-notifier=${n.name}>
            <td>${n.name}</td><td>${n.kind}</td><td>${n.destination}</td><td>${n.min_severity}</td>
            <td>${count(n.delivered)}</td><td>${count(n.pending)}</td>
            <td class=${n.failed ? "error" : ""}>${count(n.failed)}</td>
            <td>
              <button disabled=${!admin} onClick=${() => act("POST", `/api/v1/notifiers/${n.name}/test`, (r) => `test message sent to ${r.destination}`)}>Test</button>
              <button class="danger" disabled=${!admin} onClick=${() => act("DELETE", `/api/v1/notifiers/${n.name}`, (r) => `removed ${r.removed}; ${r.dropped_messages} queued message(s) dropped`)}>Remove</button>
            </td>
          </tr>`,
        )}
      </tbody>
    </table>
    ${admin &&
    html`<form class="add" onSubmit=${add} aria-label="Add a notifier">
      <label>Name <input name="name" required pattern=${"[A-Za-z0-9_\\-]{1,64}"} /></label>
      <label
        >Kind
        <select name="kind" value=${kind} onChange=${(e) => setKind(e.target.value)}>
          <option value="webhook">webhook</option><option value="slack">Slack</option>
          <option value="webex">Webex</option><option value="syslog">syslog</option>
        </select></label
      >
      <label
        >Min severity
        <select name="min_severity">
          <option>low</option><option>medium</option><option>high</option><option>critical</option>
        </select></label
      >
      ${(kind === "webhook" || kind === "slack") && html`<label>URL <input name="url" type="url" required size="40" /></label>`}
      ${kind === "webhook" && html`<label>Secret (HMAC) <input name="secret" type="password" /></label>`}
      ${kind === "webex" &&
      html`<label>Room id <input name="room_id" required /></label>
        <label>Bot token <input name="token" type="password" required /></label>
        <label>API URL <input name="api_url" placeholder="https://webexapis.com" /></label>`}
      ${kind === "syslog" &&
      html`<label>Address <input name="address" placeholder="siem.example.com:514" required /></label>
        <label>Transport <select name="transport"><option value="udp">UDP</option><option value="tcp">TCP</option></select></label>
        <label>Facility <input name="facility" type="number" min="0" max="23" value="4" /></label>
        <label class="check"><input name="cef" type="checkbox" /> CEF</label>`}
      <button type="submit">Add notifier</button>
    </form>`}
  </div>`;
}

function NetList({ title, path, field, admin, withType, help }) {
  const [v, error, reload, setError] = useList(path);
  async function add(e) {
    e.preventDefault();
    const f = new FormData(e.target);
    const b = { entry: f.get("entry"), label: f.get("label") };
    if (withType) b.type = f.get("type") || "*";
    try {
      await api("POST", path, b);
      e.target.reset();
      reload();
    } catch (err) {
      setError(err.message);
    }
  }
  async function remove(entry, type) {
    const q = new URLSearchParams({ entry });
    if (type) q.set("type", type);
    try {
      await api("DELETE", `${path}?${q}`);
      reload();
    } catch (err) {
      setError(err.message);
    }
  }
  const rows = v ? v[field] : [];
  return html`<div class="panel">
    <h2>${title}</h2>
    <p class="hint">${help}</p>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${rows.length === 0
      ? html`<p class="empty">Empty.</p>`
      : html`<table>
          <thead><tr><th>Network</th>${withType && html`<th>Alert type</th>`}<th>Label</th><th></th></tr></thead>
          <tbody>
            ${rows.map(
              (r) => html`<tr>
                <td><code>${r.entry}</code></td>${withType && html`<td>${r.type}</td>`}<td>${r.label}</td>
                <td><button class="danger" disabled=${!admin} onClick=${() => remove(r.entry, r.type)}>Remove</button></td>
              </tr>`,
            )}
          </tbody>
        </table>`}
    ${admin &&
    html`<form class="add" onSubmit=${add} aria-label=${`Add to the ${field}`}>
      <label>Address or CIDR <input name="entry" required /></label>
      ${withType && html`<label>Alert type <input name="type" placeholder="* (all)" /></label>`}
      <label>Label <input name="label" /></label>
      <button type="submit">Add</button>
    </form>`}
  </div>`;
}

function SensitivityList({ admin }) {
  const [v, error, reload, setError] = useList("/api/v1/sensitivity");
  async function set(e) {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      await api("POST", "/api/v1/sensitivity", {
        network: f.get("network") || "*",
        type: f.get("type") || "*",
        level: f.get("level"),
      });
      e.target.reset();
      reload();
    } catch (err) {
      setError(err.message);
    }
  }
  async function remove(r) {
    try {
      await api("DELETE", `/api/v1/sensitivity?${new URLSearchParams({ network: r.network, type: r.type })}`);
      reload();
    } catch (err) {
      setError(err.message);
    }
  }
  const rows = v ? v.sensitivity : [];
  return html`<div class="panel">
    <h2>Sensitivity</h2>
    <p class="hint">
      Per alert type and network of the alerts' source: off, low (twice the thresholds), medium
      (the default), high (half, for flow-log scans). The most specific network wins.
    </p>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${rows.length === 0
      ? html`<p class="empty">Everything at medium.</p>`
      : html`<table>
          <thead><tr><th>Network</th><th>Alert type</th><th>Level</th><th></th></tr></thead>
          <tbody>
            ${rows.map(
              (r) => html`<tr>
                <td><code>${r.network}</code></td><td>${r.type}</td><td>${r.level}</td>
                <td><button class="danger" disabled=${!admin} onClick=${() => remove(r)}>Remove</button></td>
              </tr>`,
            )}
          </tbody>
        </table>`}
    ${admin &&
    html`<form class="add" onSubmit=${set} aria-label="Set a sensitivity">
      <label>Network <input name="network" placeholder="* (all)" /></label>
      <label>Alert type <input name="type" placeholder="* (all)" /></label>
      <label
        >Level
        <select name="level">
          <option>off</option><option>low</option><option selected>medium</option><option>high</option>
        </select></label
      >
      <button type="submit">Set</button>
    </form>`}
  </div>`;
}

export function Settings({ session }) {
  const admin = session.role === "admin";
  return html`<section class="settings">
    <h1>Settings</h1>
    ${!admin && html`<p class="hint">Viewers can read the settings; an admin changes them.</p>`}
    <${Notifiers} admin=${admin} />
    <div class="two">
      <${NetList}
        title="Allowlist"
        path="/api/v1/allowlist"
        field="allowlist"
        withType=${true}
        admin=${admin}
        help="Sources whose alerts of a type (or all types) are not raised, such as a sanctioned vulnerability scanner."
      />
      <${NetList}
        title="Watchlist"
        path="/api/v1/watchlist"
        field="watchlist"
        withType=${false}
        admin=${admin}
        help="Traffic to or from these raises a watchlist_hit alert (sensor flows and cloud logs)."
      />
    </div>
    <${SensitivityList} admin=${admin} />
  </section>`;
}
