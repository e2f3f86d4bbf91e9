// Flows explorer: filters, a time range, top-N by bytes / packets / flows, and the flows.
import { html } from "htm/preact";
import { useEffect, useState } from "preact/hooks";
import { get, query } from "./api.js";
import { BarChart } from "./chart.js";
import { FlowTable } from "./alerts.js";
import { bytes, count } from "./format.js";

const WINDOWS = [
  ["15 min", 900e3],
  ["1 hour", 3600e3],
  ["24 hours", 86400e3],
  ["7 days", 7 * 86400e3],
];

export function Flows() {
  // #/flows/ADDRESS opens the explorer on one address (from the overview's top talkers).
  const preset = decodeURIComponent(location.hash.split("/")[2] || "");
  const [f, setF] = useState({
    ip: preset,
    port: "",
    protocol: "",
    source: "",
    window: String(86400e3),
    by: "bytes",
    group: "src_ip",
  });
  const [d, setD] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    const since = new Date(Date.now() - Number(f.window)).toISOString();
    Promise.all([
      get(
        `/api/v1/flows${query({ ip: f.ip, port: f.port, protocol: f.protocol, source: f.source, since, limit: 200 })}`,
      ),
      get(`/api/v1/top${query({ by: f.by, group: f.group, since, source: f.source, limit: 15 })}`),
    ])
      .then(([flows, top]) => {
        setD({ flows: flows.flows, top: top.top });
        setError(null);
      })
      .catch((e) => setError(e.message));
  }, [JSON.stringify(f)]);
  const set = (k) => (e) => setF({ ...f, [k]: e.target.value });
  return html`<section>
    <h1>Flows</h1>
    <form class="filters" onSubmit=${(e) => e.preventDefault()}>
      <label>Address <input name="ip" value=${f.ip} onChange=${set("ip")} placeholder="10.0.0.5" /></label>
      <label>Port <input name="port" value=${f.port} onChange=${set("port")} size="6" /></label>
      <label
        >Protocol
        <select name="protocol" value=${f.protocol} onChange=${set("protocol")}>
          <option value="">any</option><option value="6">tcp</option><option value="17">udp</option>
          <option value="1">icmp</option><option value="58">icmpv6</option>
        </select></label
      >
      <label
        >Source
        <select name="source" value=${f.source} onChange=${set("source")}>
          <option value="">any</option><option value="sensor">sensors</option>
          <option value="aws">AWS</option><option value="gcp">GCP</option><option value="azure">Azure</option>
        </select></label
      >
      <label
        >Range
        <select name="window" value=${f.window} onChange=${set("window")}>
          ${WINDOWS.map(([l, ms]) => html`<option value=${String(ms)}>${l}</option>`)}
        </select></label
      >
    </form>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${d &&
    html`<div class="panel">
        <h2>
          Top
          <select aria-label="Group" value=${f.group} onChange=${set("group")}>
            <option value="src_ip">sources</option><option value="dst_ip">destinations</option>
            <option value="pair">conversations</option><option value="dst_port">ports</option>
          </select>
          by
          <select aria-label="Rank by" value=${f.by} onChange=${set("by")}>
            <option value="bytes">bytes</option><option value="packets">packets</option>
            <option value="flows">flows</option>
          </select>
        </h2>
        ${d.top.length === 0
          ? html`<p class="empty">No flows in this range.</p>`
          : html`<${BarChart}
              label="Top-N"
              horizontal=${true}
              labels=${d.top.map((t) => t.key)}
              datasets=${[{ label: f.by, data: d.top.map((t) => t[f.by]), backgroundColor: "#0f766e" }]}
            />
            <p class="hint">
              ${d.top.map((t) => `${t.key}: ${bytes(t.bytes)}, ${count(t.packets)} packets`).join(" · ")}
            </p>`}
      </div>
      <div class="panel">
        <h2>Flows (newest first, at most 200)</h2>
        ${d.flows.length === 0 ? html`<p class="empty">No flows match.</p>` : html`<${FlowTable} flows=${d.flows} />`}
      </div>`}
  </section>`;
}
