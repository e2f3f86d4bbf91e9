// Sensors: status, version, kernel, interfaces with their attach modes, the control plane
// (replica, in cluster mode) each one reports to, and the kernel's and the agent's counters
// (drops first).
import { html } from "htm/preact";
import { useEffect, useState } from "preact/hooks";
import { get } from "./api.js";
import { ago, count, when } from "./format.js";

export function Sensors() {
  const [s, setS] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    get("/api/v1/sensors")
      .then((v) => setS(v.sensors))
      .catch((e) => setError(e.message));
  }, []);
  if (error) return html`<p class="error" role="alert">${error}</p>`;
  if (!s) return html`<p class="loading">Loading…</p>`;
  return html`<section>
    <h1>Sensors</h1>
    ${s.length === 0 &&
    html`<p class="empty">
      No sensors yet: <code>picket-controlplane sensors --data-dir DIR add NAME</code> prints a key.
    </p>`}
    <table class="sensors">
      <thead>
        <tr><th>Sensor</th><th>Health</th><th>Host</th><th>Interfaces (attach mode)</th><th>Version</th><th>Kernel</th><th>Last heartbeat</th><th title="The control plane (replica) that received its last heartbeat">Control plane</th><th>Counters</th></tr>
      </thead>
      <tbody>
        ${s.map(
          (x) => html`<tr>
            <td>${x.name}</td>
            <td><span class=${`health health-${x.health}`}>${x.health}</span></td>
            <td>${x.hostname || ""}${x.k8s_node ? html` <small class="hint">node ${x.k8s_node}</small>` : ""}</td>
            <td class="ifaces">
              ${(x.interfaces || []).map(
                (i) => html`<div>
                  <code>${i.name}</code> XDP ${i.xdp_mode || "?"}, tc ${i.tc_mode || "?"}
                  <small class="hint">${(i.addresses || []).join(", ")}</small>
                </div>`,
              )}
            </td>
            <td>${x.version || ""}</td>
            <td>${x.kernel || ""}</td>
            <td title=${when(x.last_heartbeat)}>${ago(x.last_heartbeat)}</td>
            <td class="replica"><code>${x.replica || ""}</code></td>
            <td>
              ${x.kernel_counters
                ? html`<details>
                    <summary>
                      ${Object.entries({ ...x.kernel_counters, ...(x.agent_counters || {}) })
                        .filter(([k, v]) => /drop|fail|evict|lost/.test(k) && v > 0)
                        .map(([k, v]) => `${k} ${count(v)}`)
                        .join(", ") || "no drops"}
                    </summary>
                    <table>
                      ${Object.entries(x.kernel_counters).map(
                        ([k, v]) => html`<tr><td>kernel</td><td>${k}</td><td>${count(v)}</td></tr>`,
                      )}
                      ${Object.entries(x.agent_counters || {}).map(
                        ([k, v]) => html`<tr><td>agent</td><td>${k}</td><td>${count(v)}</td></tr>`,
                      )}
                    </table>
                  </details>`
                : "none yet"}
            </td>
          </tr>`,
        )}
      </tbody>
    </table>
  </section>`;
}
