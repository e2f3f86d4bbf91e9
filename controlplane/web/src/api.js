// The REST API, with the session cookie (sent by the browser) and the session's CSRF token on
// every change. A 401 means the session is gone: the app shows the login again.

let csrf = null;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function setCsrf(token) {
  csrf = token;
}

export async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && csrf) headers["x-csrf-token"] = csrf;
  const r = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 204) return null;
  let v = null;
  try {
    v = await r.json();
  } catch {
    throw new ApiError(r.status, "bad_response", `HTTP ${r.status} from ${path}`);
  }
  if (!r.ok) {
    const e = v && v.error ? v.error : { code: "error", message: `HTTP ${r.status}` };
    if (r.status === 401) window.dispatchEvent(new CustomEvent("picket:logged-out"));
    throw new ApiError(r.status, e.code, e.message);
  }
  return v;
}

export const get = (path) => api("GET", path);

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}
