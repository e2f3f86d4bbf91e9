// Picket's dashboard: a single page with hash routes (#/overview, #/alerts, #/alerts/7,
// #/entities, #/entities/10.0.0.5, #/flows, #/sensors), talking to /api/v1/ with the session
// cookie.
import { html, render } from "htm/preact";
import { useEffect, useState } from "preact/hooks";
import { api, get, setCsrf } from "./api.js";
import { Overview } from "./overview.js";
import { AlertList, AlertDetail } from "./alerts.js";
import { Flows } from "./flows.js";
import { EntityDetail, EntityList } from "./entities.js";
import { Sensors } from "./sensors.js";
import { Settings } from "./settings.js";
import "./style.css";

function useHash() {
  const [hash, setHash] = useState(location.hash || "#/overview");
  useEffect(() => {
    const on = () => setHash(location.hash || "#/overview");
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return hash;
}

function Login({ onLogin }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  async function submit(e) {
    e.preventDefault();
    const f = new FormData(e.target);
    setBusy(true);
    setError(null);
    try {
      const s = await api("POST", "/api/v1/session", {
        username: f.get("username"),
        password: f.get("password"),
      });
      setCsrf(s.csrf_token);
      onLogin(s);
    } catch (err) {
      setError(err.message);
    } finally {
      setBusy(false);
    }
  }
  return html`<main class="login">
    <form onSubmit=${submit} aria-label="Log in">
      <h1>Picket</h1>
      <label>User <input name="username" autocomplete="username" required autofocus /></label>
      <label
        >Password
        <input name="password" type="password" autocomplete="current-password" required
      /></label>
      ${error && html`<p class="error" role="alert">${error}</p>`}
      <button type="submit" disabled=${busy}>Log in</button>
    </form>
  </main>`;
}

const NAV = [
  ["#/overview", "Overview"],
  ["#/alerts", "Alerts"],
  ["#/entities", "Entities"],
  ["#/flows", "Flows"],
  ["#/sensors", "Sensors"],
  ["#/settings", "Settings"],
];

function App() {
  const [session, setSession] = useState(undefined);
  const hash = useHash();
  useEffect(() => {
    get("/api/v1/session")
      .then((s) => {
        setCsrf(s.csrf_token);
        setSession(s);
      })
      .catch(() => setSession(null));
    const out = () => setSession(null);
    addEventListener("picket:logged-out", out);
    return () => removeEventListener("picket:logged-out", out);
  }, []);
  if (session === undefined) return html`<p class="loading">Loading…</p>`;
  if (session === null) return html`<${Login} onLogin=${setSession} />`;
  async function logout() {
    try {
      await api("DELETE", "/api/v1/session");
    } finally {
      setCsrf(null);
      setSession(null);
    }
  }
  const [route, arg] = hash.slice(2).split("/");
  let page;
  if (route === "alerts" && arg) page = html`<${AlertDetail} id=${arg} session=${session} />`;
  else if (route === "alerts") page = html`<${AlertList} />`;
  else if (route === "entities" && arg) page = html`<${EntityDetail} ip=${decodeURIComponent(arg)} />`;
  else if (route === "entities") page = html`<${EntityList} />`;
  else if (route === "flows") page = html`<${Flows} />`;
  else if (route === "sensors") page = html`<${Sensors} />`;
  else if (route === "settings") page = html`<${Settings} session=${session} />`;
  else page = html`<${Overview} />`;
  return html`<div class="shell">
    <header>
      <a class="brand" href="#/overview">Picket</a>
      <nav>
        ${NAV.map(
          ([href, name]) =>
            html`<a href=${href} class=${hash.startsWith(href) ? "active" : ""}>${name}</a>`,
        )}
      </nav>
      <span class="who">${session.user} (${session.role})</span>
      <button class="link" onClick=${logout}>Log out</button>
    </header>
    <main>${page}</main>
  </div>`;
}

render(html`<${App} />`, document.getElementById("app"));
