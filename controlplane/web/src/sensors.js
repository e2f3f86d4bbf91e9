// Sensors: status, version, kernel, attach mode and the kernel's drop counters.
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
        <tr><th>Sensor</th><th>Health</th><th>Host</th><th>Version</th><th>Kernel</th><th>Last heartbeat</th><th>Counters</th></tr>
      </thead>
      <tbody>
        ${s.map(
          (x) => html`<tr>
            <td>${x.name}</td>
            <td><span class=${`health health-${x.health}`}>${x.health}</span></td>
            <td>${x.hostname || ""}</td>
            <td>${x.version || ""}</td>
            <td>${x.kernel || ""}</td>
            <td title=${when(x.last_heartbeat)}>${ago(x.last_heartbeat)}</td>
            <td>
              ${x.kernel_counters
                ? html`<details>
                    <summary>
                      ${Object.entries(x.kernel_counters)
                        .filter(([k, v]) => /drop|fail|evict/.test(k) && v > 0)
                        .map(([k, v]) => `${k} ${count(v)}`)
                        .join(", ") || "no drops"}
                    </summary>
                    <table>
                      ${Object.entries(x.kernel_counters).map(
                        ([k, v]) => html`<tr><td>${k}</td><td>${count(v)}</td></tr>`,
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
