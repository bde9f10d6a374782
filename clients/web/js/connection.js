// Whether the server is there, kept true. watchConnection(onBack) probes GET /ready every
// POLL_MS, at once when the tab is shown again, and when noteFailure(err) hears of a network
// error; the header says "Connected" only while the last thing heard from the server was good.
// onBack() (it reloads the persona list: the server may have restarted with other personas)
// runs when the server answers again after being away, loading or failing. setConnection(kind,
// text) is how the rest of the page reports what its own requests learnt.

import { probeReady } from "./api.js";
import { ui } from "./dom.js";
import { state } from "./state.js";

export const POLL_MS = 4000;
const LABELS = {
  connecting: "Connecting…",
  online: "Connected",
  loading: "The model is loading…",
  offline: "Not connected: the server does not answer. Retrying…",
  auth: "Not signed in: the server needs an API key",
  error: "The server has a problem",
};
const AWAY = ["offline", "loading", "error"];

let timer = null;
let probing = false;
let onBack = () => {};

export function setConnection(kind, text = LABELS[kind]) {
  state.connection = kind;
  ui.status.dataset.state = kind;
  ui.statusText.textContent = text;
}

export function watchConnection(callback) {
  onBack = callback;
  document.addEventListener("visibilitychange", () => { if (!document.hidden) probe(); });
  window.addEventListener("online", probe);
  window.addEventListener("offline", () => setConnection("offline"));
  schedule();
}

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(probe, POLL_MS);
}

export async function probe() {
  if (probing) return;
  probing = true;
  try {
    const problem = await probeReady(AbortSignal.timeout(POLL_MS));
    if (problem) {
      setConnection(problem.code === "not_ready" ? "loading" : "error",
                    problem.code === "not_ready" ? LABELS.loading : `${LABELS.error}: ${problem.message}`);
    } else if (AWAY.includes(state.connection)) {
      setConnection("connecting", "Reconnecting…");
      onBack();
    }
  } catch {
    setConnection("offline");
  } finally {
    probing = false;
    schedule();
  }
}

// A request of the page failed: a network error means the server is gone until a probe says
// otherwise.
export function noteFailure(err) {
  if (err instanceof TypeError) {
    setConnection("offline");
    probe();
  }
}
