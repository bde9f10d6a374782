// What the page remembers: the persona list, the selection, the open conversation (plain data,
// saved by store.js), the running stream, the connection, and the settings kept in
// localStorage. Plain data: no DOM, no network.

export const STORE = {
  apiKey: "cameo.apiKey",
  adminKey: "cameo.adminKey",
  persona: "cameo.persona",
  maxTokens: "cameo.maxTokens",
  temperature: "cameo.temperature",
};

export const state = {
  models: [],          // entries of /v1/models
  persona: null,       // the selected entry
  chat: null,          // the open conversation (see store.js for its shape)
  controller: null,    // AbortController of the running stream
  streaming: null,     // the message the running stream writes into
  connection: "connecting",  // connecting | online | loading | offline | auth | error
};

export function stored(key) {
  try { return localStorage.getItem(key) || ""; } catch { return ""; }
}

export function store(key, value) {
  try {
    if (value) localStorage.setItem(key, value); else localStorage.removeItem(key);
  } catch { /* private mode: settings last for this page only */ }
}

export function isBase(model) {
  return model.parent === null || model.parent === undefined;
}

export function label(model) {
  if (!model) return "…";
  return model.display_name || (isBase(model) ? "Base model" : model.id);
}

export function findModel(id) {
  return state.models.find((m) => m.id === id) || null;
}
