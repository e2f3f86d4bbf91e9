// Overview: what is happening, who, since when.
import { html } from "htm/preact";
import { useEffect, useState } from "preact/hooks";
import { get, query } from "./api.js";
import { BarChart } from "./chart.js";
import { SEVERITIES, SEVERITY_COLORS, ago, bytes, count } from "./format.js";

const RANGES = {
  "24h": { ms: 86400e3, step: 3600e3, label: (d) => `${String(d.getUTCHours()).padStart(2, "0")}:00` },
  "7d": { ms: 7 * 86400e3, step: 86400e3, label: (d) => d.toISOString().slice(5, 10) },
  "30d": { ms: 30 * 86400e3, step: 86400e3, label: (d) => d.toISOString().slice(5, 10) },
};

/// Alerts first seen in each bucket of the range, by severity.
export function buckets(alerts, range, now = Date.now()) {
  const r = RANGES[range];
  const n = Math.round(r.ms / r.step);
  const start = Math.floor((now - r.ms) / r.step + 1) * r.step;
  const labels = [];
  for (let i = 0; i < n; i++) labels.push(r.label(new Date(start + i * r.step)));
  const data = Object.fromEntries(SEVERITIES.map((s) => [s, new Array(n).fill(0)]));
  for (const a of alerts) {
    const i = Math.floor((new Date(a.first_seen).getTime() - start) / r.step);
    if (i >= 0 && i < n && data[a.severity]) data[a.severity][i]++;
  }
  return { labels, data };
}

export function Overview() {
  const [range, setRange] = useState("7d");
  const [d, setD] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    const since = new Date(Date.now() - RANGES[range].ms).toISOString();
    Promise.all([
      get(`/api/v1/alerts${query({ since, limit: 1000 })}`),
      get("/api/v1/alerts?status=open&limit=1000"),
      get("/api/v1/sensors"),
      get("/api/v1/coverage"),
      get("/api/v1/health"),
      get(`/api/v1/top${query({ group: "src_ip", by: "bytes", since, limit: 10 })}`),
    ])
      .then(([alerts, open, sensors, coverage, health, top]) =>
        setD({ alerts, open, sensors, coverage, health, top }),
      )
      .catch((e) => setError(e.message));
  }, [range]);
  if (error) return html`<p class="error" role="alert">${error}</p>`;
  if (!d) return html`<p class="loading">Loading…</p>`;
  const open = d.open.alerts;
  const bySeverity = Object.fromEntries(
    SEVERITIES.map((s) => [s, open.filter((a) => a.severity === s).length]),
  );
  const sensorsOk = d.sensors.sensors.filter((s) => s.health === "ok").length;
  const b = buckets(d.alerts.alerts, range);
  return html`<section class="overview">
    <h1>Overview</h1>
    <div class="cards">
      <a class="card" href="#/alerts">
        <span class="big">${open.length}</span> open alerts
        <span class="sev-row"
          >${SEVERITIES.map(
            (s) => html`<span class=${`sev sev-${s}`}>${bySeverity[s]} ${s}</span> `,
          )}</span
        >
      </a>
      <a class="card" href="#/sensors">
        <span class="big">${sensorsOk}/${d.sensors.sensors.length}</span> sensors reporting
      </a>
      <div class="card">
        <span class="big">${d.coverage.gaps.length}</span> addresses without a sensor
        (last 24 h of cloud logs)
      </div>
      <div class="card">
        <span class="big">${d.health.notifications.failed}</span> notifications failed
        <small>${d.health.notifications.pending} pending, ${d.health.notifications.delivered} delivered</small>
      </div>
    </div>
    <div class="panel">
      <h2>
        Alerts by severity
        <select aria-label="Range" value=${range} onChange=${(e) => setRange(e.target.value)}>
          <option value="24h">last 24 hours</option>
          <option value="7d">last 7 days</option>
          <option value="30d">last 30 days</option>
        </select>
      </h2>
      <${BarChart}
        label="Alerts by severity over time"
        stacked=${true}
        labels=${b.labels}
        datasets=${SEVERITIES.map((s) => ({
          label: s,
          data: b.data[s],
          backgroundColor: SEVERITY_COLORS[s],
        }))}
      />
    </div>
    <div class="two">
      <div class="panel">
        <h2>Top talkers (bytes, both directions)</h2>
        ${d.top.top.length === 0
          ? html`<p class="empty">No flows in this range.</p>`
          : html`<${BarChart}
              label="Top talkers by bytes"
              horizontal=${true}
              labels=${d.top.top.map((t) => t.key)}
              datasets=${[
                { label: "bytes", data: d.top.top.map((t) => t.bytes), backgroundColor: "#0f766e" },
              ]}
            />
            <table>
              <thead><tr><th>Source</th><th>Bytes</th><th>Packets</th><th>Flows</th></tr></thead>
              <tbody>
                ${d.top.top.map(
                  (t) => html`<tr>
                    <td><a href=${`#/flows/${encodeURIComponent(t.key)}`}>${t.key}</a></td>
                    <td>${bytes(t.bytes)}</td>
                    <td>${count(t.packets)}</td>
                    <td>${count(t.flows)}</td>
                  </tr>`,
                )}
              </tbody>
            </table>`}
      </div>
      <div class="panel">
        <h2>Sensors</h2>
        <table>
          <thead><tr><th>Sensor</th><th>Health</th><th>Last heartbeat</th></tr></thead>
          <tbody>
            ${d.sensors.sensors.map(
              (s) => html`<tr>
                <td>${s.name}</td>
                <td><span class=${`health health-${s.health}`}>${s.health}</span></td>
                <td>${ago(s.last_heartbeat)}</td>
              </tr>`,
            )}
          </tbody>
        </table>
        <h2>Coverage gaps</h2>
        ${d.coverage.gaps.length === 0
          ? html`<p class="empty">Every internal address in the cloud logs has a sensor.</p>`
          : html`<ul class="gaps">
              ${d.coverage.gaps.slice(0, 20).map(
                (g) => html`<li><code>${g.ip}</code> in ${g.vpcs.join(", ") || g.observers.join(", ")}, ${count(g.flows)} flows</li>`,
              )}
            </ul>`}
      </div>
    </div>
  </section>`;
}
