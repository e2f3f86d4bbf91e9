// Alerts: the list with filters, and one alert with its evidence, timeline, raw flows and the
// triage actions (close, snooze, assign, tag, comment).
import { html } from "htm/preact";
import { useEffect, useState } from "preact/hooks";
import { api, get, query } from "./api.js";
import { BarChart } from "./chart.js";
import { PROTOCOLS, SEVERITIES, ago, bytes, count, when } from "./format.js";

export function AlertList() {
  const [f, setF] = useState({ status: "open", severity: "", type: "" });
  const [pages, setPages] = useState([]);
  const [next, setNext] = useState(null);
  const [error, setError] = useState(null);
  function load(cursor) {
    get(`/api/v1/alerts${query({ ...f, limit: 50, cursor })}`)
      .then((v) => {
        setPages((p) => (cursor ? [...p, ...v.alerts] : v.alerts));
        setNext(v.next_cursor);
        setError(null);
      })
      .catch((e) => setError(e.message));
  }
  useEffect(() => load(null), [f.status, f.severity, f.type]);
  const set = (k) => (e) => setF({ ...f, [k]: e.target.value });
  return html`<section>
    <h1>Alerts</h1>
    <form class="filters" onSubmit=${(e) => e.preventDefault()}>
      <label
        >Status
        <select name="status" value=${f.status} onChange=${set("status")}>
          <option value="">any</option>
          <option value="open">open</option>
          <option value="snoozed">snoozed</option>
          <option value="closed">closed</option>
        </select></label
      >
      <label
        >Severity
        <select name="severity" value=${f.severity} onChange=${set("severity")}>
          <option value="">any</option>
          ${SEVERITIES.map((s) => html`<option value=${s}>${s}</option>`)}
        </select></label
      >
      <label
        >Type
        <input name="type" placeholder="port_scan" value=${f.type} onChange=${set("type")}
      /></label>
    </form>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <table class="alerts">
      <thead>
        <tr>
          <th>#</th><th>Severity</th><th>Type</th><th>Source</th><th>Targets</th>
          <th>Last seen</th><th>Status</th><th>Assignee</th>
        </tr>
      </thead>
      <tbody>
        ${pages.map(
          (a) => html`<tr data-alert=${a.id}>
            <td><a href=${`#/alerts/${a.id}`}>${a.id}</a></td>
            <td><span class=${`sev sev-${a.severity}`}>${a.severity}</span></td>
            <td><a href=${`#/alerts/${a.id}`}>${a.type}</a></td>
            <td><code>${a.source}</code></td>
            <td>${count(a.targets_total)}</td>
            <td title=${when(a.last_seen)}>${ago(a.last_seen)}</td>
            <td>${a.status}</td>
            <td>${a.assignee || ""}</td>
          </tr>`,
        )}
      </tbody>
    </table>
    ${pages.length === 0 && !error && html`<p class="empty">No alerts match.</p>`}
    ${next && html`<button onClick=${() => load(next)}>More</button>`}
  </section>`;
}

const SNOOZES = [
  ["1 hour", 3600e3],
  ["1 day", 86400e3],
  ["1 week", 7 * 86400e3],
];

function isIp(s) {
  // Not a network (new_internal_device names one, e.g. 2001:db8::/56) nor a VPC id.
  return !s.includes("/") && (/^[0-9.]+$/.test(s) || s.includes(":"));
}

/// The address of a target (`10.0.0.5`, `10.0.0.5:22`, `[fd00::5]:22`, `fd00::5`), if any.
function targetIp(t) {
  const v6 = /^\[([0-9a-fA-F:.]+)\](?::\d+)?$/.exec(t);
  if (v6) return v6[1];
  const v4 = /^(\d+\.\d+\.\d+\.\d+)(?::\d+)?$/.exec(t);
  if (v4) return v4[1];
  return /^[0-9a-fA-F:]+$/.test(t) && t.includes(":") ? t : null;
}

/// A scan's story, first on its alert's page: the ports it found open, its extent, and the
/// sessions that followed it up.
function ScanStory({ a }) {
  const x = a.observations.find((o) => o.kind === "scan_extent");
  const follow = a.observations.filter((o) => o.kind === "follow_up");
  if (!x && !follow.length) return null;
  return html`<div class="panel scan-story">
    ${x &&
    html`<h2>Found open</h2>
      ${x.open_found.length
        ? html`<ul class="open-found">
            ${x.open_found.map((l) => html`<li><code>${l}</code></li>`)}
          </ul>`
        : x.other_total
          ? html`<p class="open-found">
              No probed port is known to be open: ${count(x.other_total)} answers came that the
              records do not describe (a flow log without TCP flags).
            </p>`
          : html`<p class="open-found">No probed port answered as open.</p>`}
      <dl class="facts extent">
        <dt>Extent</dt>
        <dd>
          ${count(x.distinct_ports)} distinct ports on ${count(x.distinct_hosts)} host${x.distinct_hosts === 1 ? "" : "s"}
          ${x.scan_over ? "" : " (still growing)"}
        </dd>
        <dt>Ports</dt>
        <dd>${Object.entries(x.port_ranges).map(([p, r]) => html`<div><strong>${p}</strong> ${r}</div>`)}</dd>
        <dt>Answers</dt>
        <dd>
          ${count(x.open_total)} open, ${count(x.closed_total)} closed, ${count(x.silent_total)} silent${x.other_total
            ? `, ${count(x.other_total)} answered otherwise`
            : ""}
        </dd>
        ${x.sampling_rate &&
        html`<dt>Sampled</dt>
          <dd>counted from a log sampled at ${x.sampling_rate}: the scan was at least this large</dd>`}
        <dt>Probes</dt>
        <dd>
          ${count(x.packets)} packets, ${count(x.probe_rate)}/s,
          ${Object.entries(x.probes).map(([k, n]) => `${k} ${count(n)}`).join(", ")}
        </dd>
        <dt>From</dt><dd>${when(x.first_probe)} to ${when(x.last_probe)}</dd>
      </dl>
      ${x.growth &&
      x.growth.length > 1 &&
      html`<${BarChart}
        label="The scan's extent at each update"
        labels=${x.growth.map((g) => new Date(g.time).toISOString().slice(11, 19))}
        datasets=${a.type === "address_sweep"
          ? [{ label: "hosts", data: x.growth.map((g) => g.hosts), backgroundColor: "#0f766e" }]
          : [{ label: "ports of a host", data: x.growth.map((g) => g.ports), backgroundColor: "#0f766e" }]}
      />`}`}
    ${follow.length > 0 &&
    html`<h2>Followed up</h2>
      <ul class="follow-up">
        ${follow.map(
          (f) => html`<li>
            ${when(f.time)}: a session to <code>${f.host}:${f.port}</code>, ${bytes(f.bytes)},
            ${count(f.after_scan_s)} s after the scan
          </li>`,
        )}
      </ul>`}
  </div>`;
}

function Observation({ o }) {
  const { kind, ...rest } = o;
  const brief = Object.entries(rest)
    .filter(([, v]) => typeof v !== "object" || v === null)
    .slice(0, 6)
    .map(([k, v]) => `${k}: ${v}`)
    .join(" · ");
  return html`<li>
    <details>
      <summary><strong>${kind || "observation"}</strong> ${brief}</summary>
      <pre>${JSON.stringify(o, null, 2)}</pre>
    </details>
  </li>`;
}

export function AlertDetail({ id, session }) {
  const [a, setA] = useState(null);
  const [flows, setFlows] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const admin = session.role === "admin";
  useEffect(() => {
    setA(null);
    get(`/api/v1/alerts/${id}`)
      .then((v) => {
        setA(v);
        if (isIp(v.source)) {
          const since = new Date(new Date(v.first_seen).getTime() - 300e3).toISOString();
          const until = new Date(new Date(v.last_seen).getTime() + 300e3).toISOString();
          get(`/api/v1/flows${query({ ip: v.source, since, until, limit: 50 })}`)
            .then((f) => setFlows(f.flows))
            .catch(() => setFlows([]));
        }
      })
      .catch((e) => setError(e.message));
  }, [id]);
  async function change(body, comment) {
    setBusy(true);
    setError(null);
    try {
      setA(
        comment
          ? await api("POST", `/api/v1/alerts/${id}/comments`, { text: comment })
          : await api("PATCH", `/api/v1/alerts/${id}`, body),
      );
    } catch (e) {
      setError(e.message);
    } finally {
      setBusy(false);
    }
  }
  if (error && !a) return html`<p class="error" role="alert">${error}</p>`;
  if (!a) return html`<p class="loading">Loading…</p>`;
  const timeline = [
    { time: a.first_seen, actor: "picket", action: "first seen", detail: "" },
    { time: a.last_seen, actor: "picket", action: "last seen", detail: `${count(a.observations_total)} observations` },
    ...a.history,
  ].sort((x, y) => new Date(x.time) - new Date(y.time));
  return html`<section class="alert-detail">
    <p><a href="#/alerts">← Alerts</a></p>
    <h1>
      <span class=${`sev sev-${a.severity}`}>${a.severity}</span> ${a.type} from${" "}
      ${isIp(a.source)
        ? html`<a href=${`#/entities/${encodeURIComponent(a.source)}`}><code class="source">${a.source}</code></a>`
        : html`<code class="source">${a.source}</code>`}
    </h1>
    <${ScanStory} a=${a} />
    <dl class="facts">
      <dt>Status</dt><dd class="status">${a.status}${a.snoozed_until ? ` until ${when(a.snoozed_until)}` : ""}</dd>
      <dt>Assignee</dt><dd>${a.assignee || "nobody"}</dd>
      <dt>Tags</dt><dd>${a.tags.length ? a.tags.join(", ") : "none"}</dd>
      <dt>First seen</dt><dd>${when(a.first_seen)}</dd>
      <dt>Last seen</dt><dd>${when(a.last_seen)} (${ago(a.last_seen)})</dd>
      <dt>Seen by</dt><dd>${a.sources.join(", ")}</dd>
    </dl>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <div class="actions" aria-label="Actions">
      ${!admin && html`<p class="hint">Viewers can read; an admin triages.</p>`}
      ${a.status === "closed"
        ? html`<button disabled=${!admin || busy} onClick=${() => change({ status: "open" })}>Reopen</button>`
        : html`<button disabled=${!admin || busy} onClick=${() => change({ status: "closed" })}>Close</button>`}
      <select
        aria-label="Snooze"
        disabled=${!admin || busy}
        onChange=${(e) => {
          const ms = Number(e.target.value);
          e.target.value = "";
          if (ms) change({ snooze_until: new Date(Date.now() + ms).toISOString() });
        }}
      >
        <option value="">Snooze…</option>
        ${SNOOZES.map(([l, ms]) => html`<option value=${ms}>${l}</option>`)}
      </select>
      ${a.assignee === session.user
        ? html`<button disabled=${!admin || busy} onClick=${() => change({ assignee: null })}>Unassign</button>`
        : html`<button disabled=${!admin || busy} onClick=${() => change({ assignee: session.user })}>Assign to me</button>`}
      <form
        class="inline"
        onSubmit=${(e) => {
          e.preventDefault();
          const tags = e.target.tags.value.split(",").map((t) => t.trim()).filter(Boolean);
          change({ tags });
        }}
      >
        <input name="tags" aria-label="Tags" placeholder="tag, tag" value=${a.tags.join(", ")} disabled=${!admin} />
        <button disabled=${!admin || busy}>Set tags</button>
      </form>
    </div>
    <div class="two">
      <div class="panel">
        <h2>Targets (${count(a.targets_total)})</h2>
        <ul class="targets">
          ${a.targets.map((t) => {
            const ip = targetIp(t);
            return html`<li>
              ${ip ? html`<a href=${`#/entities/${encodeURIComponent(ip)}`}><code>${t}</code></a>` : html`<code>${t}</code>`}
            </li>`;
          })}
        </ul>
        ${a.targets_total > a.targets.length && html`<p class="hint">and ${count(a.targets_total - a.targets.length)} more</p>`}
        <h2>Observations (${count(a.observations_total)})</h2>
        <ul class="observations">${a.observations.map((o) => html`<${Observation} o=${o} />`)}</ul>
      </div>
      <div class="panel">
        <h2>Timeline</h2>
        <ol class="timeline">
          ${timeline.map(
            (h) => html`<li>
              <time>${when(h.time)}</time> <strong>${h.action}</strong> ${h.detail}
              <span class="actor">${h.actor}</span>
            </li>`,
          )}
        </ol>
        <form
          class="comment"
          onSubmit=${(e) => {
            e.preventDefault();
            const t = e.target.text.value.trim();
            if (t) change(null, t).then(() => (e.target.text.value = ""));
          }}
        >
          <textarea name="text" aria-label="Comment" placeholder="Comment" rows="3" disabled=${!admin}></textarea>
          <button disabled=${!admin || busy}>Comment</button>
        </form>
      </div>
    </div>
    <div class="panel">
      <h2>
        Flows of ${a.source} around the alert (newest 50,${" "}
        <a href=${`#/flows/${encodeURIComponent(a.source)}`}>all in Flows</a>)
      </h2>
      ${flows === null
        ? html`<p class="hint">${isIp(a.source) ? "Loading…" : "The source is not an address."}</p>`
        : flows.length === 0
          ? html`<p class="empty">No stored flows (they may be past raw retention).</p>`
          : html`<${FlowTable} flows=${flows} />`}
    </div>
  </section>`;
}

// A value the record did not write (null in the API) is "-", never 0.
function absent(v, show = (x) => x) {
  return v == null ? "-" : show(v);
}

// What a flow's details show besides the table's columns, in this order; then its extras
// (the provider's other fields, kept as written; a sensor flow's pods).
const DETAILS = [
  ["start", "start", when],
  ["direction", "direction"],
  ["vpc", "VPC"],
  ["subnet", "subnet"],
  ["instance", "instance"],
  ["region", "region"],
  ["zone", "zone"],
  ["pkt_src_ip", "packet source (NAT)"],
  ["pkt_dst_ip", "packet destination (NAT)"],
  ["tcp_flags", "TCP flags"],
  ["reverse_tcp_flags", "TCP flags back"],
  ["sampling_rate", "sampling rate"],
  ["initiator_by", "initiator told by"],
  ["correlated", "correlated flows"],
];

function FlowDetails({ f }) {
  const facts = DETAILS.filter(([k]) => f[k] != null && f[k] !== "").map(([k, label, show]) => [
    label,
    show ? show(f[k]) : String(f[k]),
  ]);
  const extra = Object.entries(f.extra || {}).map(([k, v]) => [
    k,
    typeof v === "object" ? JSON.stringify(v) : String(v),
  ]);
  return html`<dl class="facts">
    ${[...facts, ...extra].map(([k, v]) => html`<dt>${k}</dt><dd><code>${v}</code></dd>`)}
  </dl>`;
}

// A row opens to the flow's details (everything the API gives for it).
export function FlowTable({ flows }) {
  const [open, setOpen] = useState(null);
  return html`<table class="flows">
    <thead>
      <tr>
        <th>End</th><th>Source</th><th>Observer</th><th>From</th><th>To</th><th>Proto</th>
        <th>Packets</th><th>Bytes</th><th>Action</th>
      </tr>
    </thead>
    <tbody>
      ${flows.map(
        (f) => html`<tr class="flow" onClick=${() => setOpen(open === f.id ? null : f.id)}>
            <td>${when(f.end)}</td>
            <td>${f.source}</td>
            <td>${f.observer}/${f.interface}</td>
            <td><code>${f.src_ip}:${absent(f.src_port)}</code></td>
            <td><code>${f.dst_ip}:${absent(f.dst_port)}</code></td>
            <td>${f.protocol == null ? "-" : PROTOCOLS[f.protocol] || f.protocol}</td>
            <td>${absent(f.packets, count)} / ${absent(f.reverse_packets, count)}</td>
            <td>${absent(f.bytes, bytes)} / ${absent(f.reverse_bytes, bytes)}</td>
            <td>${f.action}</td>
          </tr>
          ${open === f.id &&
          html`<tr class="flow-details">
            <td colspan="9"><${FlowDetails} f=${f} /></td>
          </tr>`}`,
      )}
    </tbody>
  </table>`;
}
