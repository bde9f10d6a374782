// Errors in plain words. explain(err, { persona }) returns { text, detail, code }: `text` is a
// sentence for people (what happened and what to do), chosen by the API's error code, else by
// the HTTP status, else by the kind of failure (network, cut stream); `detail` is the technical
// part (HTTP status, error code, parameter and the server's own message) that the page keeps
// behind a "Details" toggle. describeError(err) is the one-line technical form the Admin panel
// shows to the people who manage the server. No DOM, no network.

import { ApiError, StreamCut } from "./api.js";

const BY_CODE = {
  invalid_api_key: () => "The server needs an API key, or did not accept this one. Enter your "
    + "API key under “Connection and settings”.",
  insufficient_permissions: () => "This needs the admin key: enter it in the Admin panel.",
  model_not_found: ({ persona }) => `${persona ? `“${persona}”` : "This persona"} is no longer `
    + "on the server (it was deleted or renamed). The persona list has been refreshed: pick "
    + "another persona and try again.",
  context_length_exceeded: () => "The conversation and the reply asked for are too long for "
    + "the model: together they pass its maximum context length. Lower “Max reply tokens” under "
    + "“Connection and settings”, delete some messages, or start a new chat.",
  too_many_messages: () => "This conversation has more messages than the server takes. Start "
    + "a new chat or delete some messages.",
  message_too_long: () => "A message is longer than the server takes. Shorten it, or start a "
    + "new chat.",
  rate_limit_exceeded: () => "You are sending faster than the server allows. Wait a moment "
    + "and try again.",
  server_busy: () => "The server is busy with other conversations. Try again in a moment.",
  not_ready: () => "The model is still loading. Try again in a moment.",
  shutting_down: () => "The server is shutting down. Try again once it is back.",
  engine_unavailable: () => "The server cannot write replies right now. Try again in a moment.",
  adapter_load_failed: () => "The server could not load this persona. Try again, or pick "
    + "another persona.",
  timeout: () => "The reply took too long, so the server stopped it. Try again, perhaps with a "
    + "lower “Max reply tokens”.",
  insufficient_storage: () => "The server's disk is full.",
  invalid_value: ({ param }) => `The server refused a setting${param ? ` (${param})` : ""}. `
    + "Check “Connection and settings”.",
  unsupported_parameter: ({ param }) => `The server does not support a setting${param ? ` (${param})` : ""}.`,
};

function byStatus(status) {
  if (status === 401) return BY_CODE.invalid_api_key();
  if (status === 403) return BY_CODE.insufficient_permissions();
  if (status === 404) return "The server does not know that address or persona.";
  if (status === 413) return "That is more than the server takes in one request.";
  if (status === 429) return BY_CODE.rate_limit_exceeded();
  if (status === 503) return "The server is not ready. Try again in a moment.";
  if (status >= 500) return "The server failed while answering. Try again; if it keeps "
    + "happening, the server's log says why.";
  return "The server refused the request.";
}

export function explain(err, { persona = "" } = {}) {
  if (err instanceof ApiError) {
    const make = err.code && BY_CODE[err.code];
    const text = make ? make({ persona, param: err.param }) : byStatus(err.status);
    const where = [err.status ? `HTTP ${err.status}` : "", err.code || "",
                   err.param ? `param: ${err.param}` : ""].filter(Boolean).join(" · ");
    return { text, detail: [where, err.message].filter(Boolean).join("\n"), code: err.code };
  }
  if (err instanceof StreamCut) {
    return { text: "The connection to the server was lost in the middle of the reply.",
             detail: err.message, code: "stream_cut" };
  }
  if (err instanceof TypeError) {
    return { text: "Cannot reach the Cameo server. Check that it is running; this page keeps "
             + "trying to reconnect.", detail: `Network error: ${err.message}`, code: "network" };
  }
  return { text: String((err && err.message) || err), detail: "", code: null };
}

export function describeError(err) {
  if (err instanceof ApiError) {
    const where = [err.status ? `HTTP ${err.status}` : "", err.code || ""].filter(Boolean);
    let text = where.length ? `${err.message} (${where.join(", ")})` : err.message;
    if (err.status === 401) text += ". Enter a key under “Connection and settings” (or “Admin”).";
    if (err.status === 403) text += ". This needs the admin key.";
    return text;
  }
  if (err instanceof TypeError) return `Cannot reach the server: ${err.message}`;
  return String(err && err.message ? err.message : err);
}
