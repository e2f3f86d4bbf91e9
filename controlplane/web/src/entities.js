// Entities: the organisation's own addresses with their inferred role, and one entity's
// roles, ports, peers and activity per hour of the week.
import { html } from "htm/preact";
import { useEffect, useState } from "preact/hooks";
import { get, query } from "./api.js";
import { BarChart } from "./chart.js";
import { ago, bytes, count, when } from "./format.js";

const DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const RANGES = [
  ["24 hours", 86400e3],
  ["7 days", 7 * 86400e3],
  ["30 days", 30 * 86400e3],
];

function since(ms) {
  return new Date(Date.now() - ms).toISOString();
}

export function EntityList() {
  const [range, setRange] = useState(String(7 * 86400e3));
  const [role, setRole] = useState("");
  const [d, setD] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    get(`/api/v1/entities${query({ since: since(Number(range)), role, limit: 500 })}`)
      .then((v) => {
        setD(v);
        setError(null);
      })
      .catch((e) => setError(e.message));
  }, [range, role]);
  return html`<section>
    <h1>Entities</h1>
    <form class="filters" onSubmit=${(e) => e.preventDefault()}>
      <label
        >Range
        <select value=${range} onChange=${(e) => setRange(e.target.value)}>
          ${RANGES.map(([l, ms]) => html`<option value=${String(ms)}>${l}</option>`)}
        </select></label
      >
      <label
        >Role
        <select value=${role} onChange=${(e) => setRole(e.target.value)}>
          <option value="">any</option>
          ${["web", "dns", "database", "mail", "directory", "ssh_bastion", "kubernetes_node", "scanner", "client", "unknown"].map(
            (r) => html`<option value=${r}>${r}</option>`,
          )}
        </select></label
      >
    </form>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${d &&
    html`<p class="hint">${count(d.total)} internal addresses in flows of this range; roles from the ports they serve.</p>
      <table class="entities">
        <thead>
          <tr>
            <th>Address</th><th>Name</th><th>Role</th><th>Serves</th><th>Peers</th><th>Flows</th>
            <th>Out / in</th><th>Last seen</th><th>Open alerts</th>
          </tr>
        </thead>
        <tbody>
          ${d.entities.map(
            (e) => html`<tr>
              <td><a href=${`#/entities/${encodeURIComponent(e.ip)}`}><code>${e.ip}</code></a></td>
              <td>${e.name || ""}</td>
              <td>${e.role} <small class="hint">${Math.round(e.role_confidence * 100)}%</small></td>
              <td>${e.serves.map((p) => p.port).join(", ")}</td>
              <td>${count(e.peers)}</td>
              <td>${count(e.flows)}</td>
              <td>${bytes(e.bytes_out)} / ${bytes(e.bytes_in)}</td>
              <td title=${when(e.last_seen)}>${ago(e.last_seen)}</td>
              <td>${e.open_alerts ? html`<a href=${`#/alerts`}>${e.open_alerts}</a>` : ""}</td>
            </tr>`,
          )}
        </tbody>
      </table>`}
  </section>`;
}

/// 7 x 24 cells, darker for more flows.
function HourOfWeek({ hours }) {
  const max = Math.max(1, ...hours);
  return html`<div class="how" role="img" aria-label="Activity per hour of the week (UTC)">
    <span></span>
    ${Array.from({ length: 24 }, (_, h) => html`<span class="how-h">${h % 3 === 0 ? h : ""}</span>`)}
    ${DAYS.map(
      (day, d) => html`<span class="how-d">${day}</span>
        ${hours.slice(d * 24, d * 24 + 24).map((n, h) => {
          const a = n === 0 ? 0 : 0.15 + 0.85 * (n / max);
          return html`<span
            class="how-c"
            style=${`background: rgba(15, 118, 110, ${a.toFixed(3)})`}
            title=${`${day} ${String(h).padStart(2, "0")}:00 UTC: ${count(n)} flows`}
          ></span>`;
        })}`,
    )}
  </div>`;
}

function Ports({ title, ports }) {
  return html`<h2>${title}</h2>
    ${ports.length === 0
      ? html`<p class="empty">None.</p>`
      : html`<table>
          <thead><tr><th>Port</th><th>Peers</th><th>Flows</th><th>Bytes</th></tr></thead>
          <tbody>
            ${ports.map(
              (p) => html`<tr><td>${p.port}</td><td>${count(p.peers)}</td><td>${count(p.flows)}</td><td>${bytes(p.bytes)}</td></tr>`,
            )}
          </tbody>
        </table>`}`;
}

export function EntityDetail({ ip }) {
  const [range, setRange] = useState(String(7 * 86400e3));
  const [e, setE] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    setE(null);
    get(`/api/v1/entities/${encodeURIComponent(ip)}${query({ since: since(Number(range)) })}`)
      .then((v) => {
        setE(v);
        setError(null);
      })
      .catch((err) => setError(err.message));
  }, [ip, range]);
  return html`<section class="entity">
    <p><a href="#/entities">← Entities</a></p>
    <h1>
      <code>${ip}</code> ${e && e.name ? html`<span class="hint">${e.name}</span>` : ""}
      <select aria-label="Range" value=${range} onChange=${(ev) => setRange(ev.target.value)}>
        ${RANGES.map(([l, ms]) => html`<option value=${String(ms)}>${l}</option>`)}
      </select>
    </h1>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${!e && !error && html`<p class="loading">Loading…</p>`}
    ${e &&
    html`<dl class="facts">
        <dt>Role</dt>
        <dd class="role">
          ${e.roles.length === 0
            ? "unknown (nothing it serves or uses points to one)"
            : e.roles.map(
                (r) => html`<div><strong>${r.role}</strong> ${Math.round(r.confidence * 100)}%: ${r.evidence}</div>`,
              )}
        </dd>
        <dt>Seen</dt><dd>${when(e.first_seen)} to ${when(e.last_seen)}</dd>
        <dt>Traffic</dt><dd>${count(e.flows)} flows, ${bytes(e.bytes_out)} out, ${bytes(e.bytes_in)} in, ${count(e.peers)} peers</dd>
        <dt>Alerts</dt>
        <dd>${e.open_alerts} open ${e.open_alerts ? html`(<a href=${`#/alerts`}>alerts</a>)` : ""}</dd>
      </dl>
      <div class="panel">
        <h2>Activity per hour of the week (flows, UTC)</h2>
        <${HourOfWeek} hours=${e.hour_of_week} />
      </div>
      <div class="two">
        <div class="panel">
          <h2>Top peers (bytes)</h2>
          ${e.peers_top.length > 0 &&
          html`<${BarChart}
            label="Top peers by bytes"
            horizontal=${true}
            labels=${e.peers_top.map((p) => `${p.ip} (${p.direction})`)}
            datasets=${[{ label: "bytes", data: e.peers_top.map((p) => p.bytes), backgroundColor: "#0f766e" }]}
          />`}
        </div>
        <div class="panel">
          <${Ports} title="Serves" ports=${e.serves} />
          <${Ports} title="Uses" ports=${e.uses} />
        </div>
      </div>
      <div class="panel countries">
        <h2>Countries of its external peers</h2>
        ${e.countries.length === 0
          ? html`<p class="empty">No external peers in this range.</p>`
          : html`<${BarChart}
                label="External peers by country (bytes)"
                labels=${e.countries.map((c) => c.country)}
                datasets=${[{ label: "bytes", data: e.countries.map((c) => c.bytes), backgroundColor: "#7c3aed" }]}
              />
              <table>
                <thead><tr><th>Country</th><th>Peers</th><th>Flows</th><th>Bytes</th></tr></thead>
                <tbody>
                  ${e.countries.map(
                    (c) => html`<tr><td>${c.country}</td><td>${count(c.peers)}</td><td>${count(c.flows)}</td><td>${bytes(c.bytes)}</td></tr>`,
                  )}
                </tbody>
              </table>
              <p class="hint">From the registries' assignment of address blocks, embedded in Picket: no lookup leaves the machine.</p>`}
      </div>`}
  </section>`;
}
