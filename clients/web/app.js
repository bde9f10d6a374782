// Cameo web chat: plain modern JavaScript, no build step, no third-party code.
//
// Talks to the server it is served from with relative URLs (v1/models, v1/chat/completions,
// v1/adapters, v1/personas/import), so it works at "/" and behind a path prefix alike.

const $ = (selector) => document.querySelector(selector);

const STORE = {
  apiKey: "cameo.apiKey",
  adminKey: "cameo.adminKey",
  persona: "cameo.persona",
  maxTokens: "cameo.maxTokens",
  temperature: "cameo.temperature",
};

const ui = {
  status: $("#server-status"),
  personaList: $("#persona-list"),
  currentName: $("#current-name"),
  currentDescription: $("#current-description"),
  messages: $("#messages"),
  error: $("#error"),
  composer: $("#composer"),
  input: $("#message-input"),
  send: $("#send"),
  stop: $("#stop"),
  newChat: $("#new-chat"),
  apiKey: $("#api-key"),
  adminKey: $("#admin-key"),
  maxTokens: $("#max-tokens"),
  temperature: $("#temperature"),
  adminPanel: $("#admin-panel"),
  uploadForm: $("#upload-form"),
  uploadName: $("#upload-name"),
  uploadConfig: $("#upload-config"),
  uploadModel: $("#upload-model"),
  uploadPersona: $("#upload-persona"),
  uploadReplace: $("#upload-replace"),
  uploadForce: $("#upload-force"),
  uploadProgress: $("#upload-progress"),
  uploadStatus: $("#upload-status"),
  uploadSubmit: $("#upload-submit"),
  importForm: $("#import-form"),
  cardFile: $("#card-file"),
  cardName: $("#card-name"),
  cardAdapter: $("#card-adapter"),
  importStatus: $("#import-status"),
  importSubmit: $("#import-submit"),
  adapterNames: $("#adapter-names"),
  adapterList: $("#adapter-list"),
  adapterStatus: $("#adapter-status"),
  refreshAdapters: $("#refresh-adapters"),
};

const state = {
  models: [],        // entries of /v1/models
  persona: null,     // the selected entry
  conversation: [],  // {role, content, persona?, el?, note?}
  controller: null,  // AbortController of the running stream
};

// ---------------------------------------------------------------------------------------------
// Storage and headers

function stored(key) {
  try { return localStorage.getItem(key) || ""; } catch { return ""; }
}

function store(key, value) {
  try {
    if (value) localStorage.setItem(key, value); else localStorage.removeItem(key);
  } catch { /* private mode: settings last for this page only */ }
}

function authHeaders(admin = false) {
  const key = (admin && ui.adminKey.value.trim()) || ui.apiKey.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// ---------------------------------------------------------------------------------------------
// Errors in the API's shape: {"error": {"message", "type", "param", "code"}}

class ApiError extends Error {
  constructor(status, message, code = null, param = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

function errorFromBody(status, body, fallback) {
  const error = body && typeof body === "object" ? body.error : null;
  if (error && typeof error === "object") {
    return new ApiError(status, error.message || fallback, error.code || null, error.param || null);
  }
  if (body && typeof body.detail === "string") return new ApiError(status, body.detail);
  return new ApiError(status, fallback || `HTTP ${status}`);
}

async function errorFromResponse(response) {
  const text = await response.text().catch(() => "");
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON */ }
  return errorFromBody(response.status, body, text.slice(0, 300) || response.statusText);
}

function describeError(err) {
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

function showError(err) {
  ui.error.textContent = describeError(err);
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

async function api(path, { method = "GET", body, admin = false } = {}) {
  const headers = { ...authHeaders(admin) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await errorFromResponse(response);
  return response.status === 204 ? null : response.json();
}

// ---------------------------------------------------------------------------------------------
// Personas

function isBase(model) {
  return model.parent === null || model.parent === undefined;
}

function label(model) {
  if (!model) return "…";
  return model.display_name || (isBase(model) ? "Base model" : model.id);
}

async function loadPersonas({ keep } = {}) {
  let data;
  try {
    data = await api("v1/models");
  } catch (err) {
    if (err instanceof ApiError && err.status === 503) {
      ui.status.textContent = "The model is loading…";
      setTimeout(() => loadPersonas({ keep }), 2000);
      return;
    }
    ui.status.textContent = "Not connected";
    if (!state.models.length) {
      const note = ui.personaList.querySelector("p.muted");
      if (note) note.textContent = "Could not load the personas (see the message by the chat).";
    }
    showError(err);
    return;
  }
  clearError();
  const models = Array.isArray(data && data.data) ? data.data : [];
  // Personas first (by name), the base model last.
  state.models = [...models.filter((m) => !isBase(m)).sort((a, b) => a.id.localeCompare(b.id)),
                  ...models.filter(isBase)];
  const personaCount = state.models.filter((m) => !isBase(m)).length;
  ui.status.textContent = `Connected · ${personaCount} persona${personaCount === 1 ? "" : "s"}`;
  renderPersonas();
  fillAdapterNames();
  const wanted = keep || (state.persona && state.persona.id) || stored(STORE.persona);
  const pick = state.models.find((m) => m.id === wanted) || state.models[0];
  if (pick) selectPersona(pick.id, { announce: false });
}

function renderPersonas() {
  const list = ui.personaList;
  for (const child of [...list.children]) if (child.tagName !== "LEGEND") child.remove();
  if (!state.models.length) {
    const empty = document.createElement("p");
    empty.className = "muted";
    empty.textContent = "No personas yet: upload an adapter in the Admin panel.";
    list.append(empty);
    return;
  }
  for (const model of state.models) {
    const id = `persona-${model.id.replace(/[^a-zA-Z0-9_-]/g, "_")}`;
    const card = document.createElement("div");
    card.className = "persona-card";
    card.dataset.persona = model.id;

    const radio = document.createElement("input");
    radio.type = "radio";
    radio.name = "persona";
    radio.id = id;
    radio.value = model.id;
    radio.addEventListener("change", () => { if (radio.checked) selectPersona(model.id); });

    const text = document.createElement("label");
    text.htmlFor = id;
    text.className = "persona-text";
    const name = document.createElement("span");
    name.className = "persona-name";
    name.textContent = label(model);
    const slug = document.createElement("code");
    slug.className = "persona-id";
    slug.textContent = isBase(model) ? "base" : model.id;
    text.append(name, " ", slug);
    if (model.description || isBase(model)) {
      const description = document.createElement("span");
      description.className = "persona-description";
      description.textContent = model.description || `${model.id}, without a persona`;
      text.append(description);
    }
    if (model.greeting) {
      const greeting = document.createElement("q");
      greeting.className = "persona-greeting";
      greeting.textContent = model.greeting;
      text.append(greeting);
    }
    card.append(radio, text);
    list.append(card);
  }
}

function selectPersona(id, { announce = true } = {}) {
  const model = state.models.find((m) => m.id === id);
  if (!model) return;
  const previous = state.persona;
  state.persona = model;
  store(STORE.persona, model.id);
  const radio = ui.personaList.querySelector(`input[name="persona"][value="${CSS.escape(id)}"]`);
  if (radio && !radio.checked) radio.checked = true;
  for (const card of ui.personaList.querySelectorAll(".persona-card")) {
    card.classList.toggle("selected", card.dataset.persona === id);
  }
  ui.currentName.textContent = label(model);
  ui.currentDescription.textContent = model.description || "";
  const started = state.conversation.some((m) => m.role === "user");
  if (!started) {
    resetConversation();
  } else if (announce && previous && previous.id !== model.id) {
    addNote(`Now talking to ${label(model)}.`);
  }
}

// ---------------------------------------------------------------------------------------------
// Conversation

function resetConversation() {
  stopStream();
  state.conversation = [];
  ui.messages.replaceChildren();
  clearError();
  if (state.persona && state.persona.greeting) {
    addMessage("assistant", state.persona.greeting, state.persona, "greeting");
  }
}

function addMessage(role, content, persona = null, kind = "") {
  const item = document.createElement("li");
  item.className = `message message-${role}${kind ? ` message-${kind}` : ""}`;
  item.dataset.role = role;
  if (persona) item.dataset.persona = persona.id;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : label(persona);
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = content;
  const meta = document.createElement("div");
  meta.className = "meta";
  item.append(who, text, meta);
  ui.messages.append(item);
  const entry = { role, content, persona: persona && persona.id, el: item };
  state.conversation.push(entry);
  scrollToEnd(true);
  return entry;
}

function addNote(text) {
  const item = document.createElement("li");
  item.className = "message message-note";
  item.dataset.role = "note";
  item.textContent = text;
  ui.messages.append(item);
  state.conversation.push({ role: "note", content: text, el: item, note: true });
  scrollToEnd(true);
}

function scrollToEnd(force = false) {
  const box = ui.messages;
  const nearEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  if (force || nearEnd) box.scrollTop = box.scrollHeight;
}

function historyForRequest() {
  return state.conversation
    .filter((m) => !m.note && (m.role === "user" || m.role === "assistant") && m.content)
    // Each reply says which persona gave it, so that after a switch the server tells the new
    // persona those turns were another character's, not its own.
    .map((m) => (m.role === "assistant" && m.persona
      ? { role: m.role, content: m.content, name: m.persona }
      : { role: m.role, content: m.content }));
}

function samplingParams() {
  const params = {};
  const maxTokens = parseInt(ui.maxTokens.value, 10);
  if (Number.isFinite(maxTokens) && maxTokens > 0) params.max_tokens = maxTokens;
  const temperature = parseFloat(ui.temperature.value);
  if (Number.isFinite(temperature)) params.temperature = temperature;
  return params;
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  document.body.classList.toggle("busy", busy);
}

async function send() {
  const text = ui.input.value.trim();
  if (!text || state.controller) return;
  if (!state.persona) {
    showError(new Error("Pick a persona first."));
    return;
  }
  clearError();
  ui.input.value = "";
  addMessage("user", text);
  const persona = state.persona;
  const reply = addMessage("assistant", "", persona, "pending");
  reply.el.dataset.state = "streaming";
  reply.el.setAttribute("aria-busy", "true");
  const body = {
    model: persona.id,
    messages: historyForRequest(),
    stream: true,
    stream_options: { include_usage: true },
    ...samplingParams(),
  };
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  let finish = null;
  let usage = null;
  try {
    await streamChat(body, controller.signal, (chunk) => {
      const choice = chunk.choices && chunk.choices[0];
      const delta = choice && choice.delta && choice.delta.content;
      if (delta) {
        reply.content += delta;
        reply.el.querySelector(".text").textContent = reply.content;
        reply.el.classList.remove("message-pending");
        scrollToEnd();
      }
      if (choice && choice.finish_reason) finish = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    });
    reply.el.dataset.state = "done";
  } catch (err) {
    if (err.name === "AbortError") {
      reply.el.dataset.state = "stopped";
      finish = "stopped";
    } else {
      reply.el.dataset.state = "error";
      showError(err);
      if (!reply.content) {
        reply.el.remove();
        state.conversation.splice(state.conversation.indexOf(reply), 1);
      }
    }
  } finally {
    state.controller = null;
    setBusy(false);
    reply.el.classList.remove("message-pending");
    reply.el.removeAttribute("aria-busy");
    const bits = [];
    if (finish === "stopped") bits.push("stopped");
    else if (finish === "length") bits.push("cut at the token limit");
    if (usage) bits.push(`${usage.completion_tokens} tokens`);
    reply.el.querySelector(".meta").textContent = bits.join(" · ");
  }
}

// POST a streaming chat completion and call onChunk with each parsed SSE event.
async function streamChat(body, signal, onChunk) {
  const response = await fetch("v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await errorFromResponse(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  const dispatch = () => {
    if (!data.length) return false;
    const payload = data.join("\n");
    data = [];
    if (payload.trim() === "[DONE]") return true;
    let chunk;
    try { chunk = JSON.parse(payload); } catch {
      throw new ApiError(0, `The server sent an unreadable event: ${payload.slice(0, 120)}`);
    }
    if (chunk && chunk.error) throw errorFromBody(500, chunk, "The stream failed");
    onChunk(chunk);
    return false;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          if (dispatch()) return;
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        }  // comments (": ping") and other fields are ignored
      }
    }
    dispatch();
  } finally {
    reader.cancel().catch(() => {});
  }
}

function stopStream() {
  if (state.controller) state.controller.abort();
}

// ---------------------------------------------------------------------------------------------
// Admin: adapter upload (XMLHttpRequest for upload progress), card import, adapter list

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

// kind: "good" (done), "bad" (failed) or "" (in progress, or nothing to say)
function setStatus(element, text, kind = "") {
  element.textContent = text;
  element.classList.toggle("bad", kind === "bad");
  element.classList.toggle("good", kind === "good");
}

const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

function uploadAdapter(form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "v1/adapters");
    for (const [key, value] of Object.entries(authHeaders(true))) xhr.setRequestHeader(key, value);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(errorFromBody(xhr.status, body, xhr.responseText.slice(0, 300) || xhr.statusText));
    };
    xhr.onerror = () => reject(new TypeError("the upload failed (network error)"));
    xhr.onabort = () => reject(new Error("the upload was cancelled"));
    xhr.send(form);
  });
}

async function onUpload(event) {
  event.preventDefault();
  const name = ui.uploadName.value.trim();
  const config = ui.uploadConfig.files[0];
  const model = ui.uploadModel.files[0];
  const persona = ui.uploadPersona.files[0];
  if (!NAME_RE.test(name)) {
    setStatus(ui.uploadStatus, "Give a persona name: lower-case letters, digits, '.', '_' or '-'.", "bad");
    ui.uploadName.focus();
    return;
  }
  if (!config || !model) {
    setStatus(ui.uploadStatus, "Choose adapter_config.json and adapter_model.safetensors.", "bad");
    (config ? ui.uploadModel : ui.uploadConfig).focus();
    return;
  }
  const form = new FormData();
  form.append("name", name);
  form.append("replace", ui.uploadReplace.checked ? "true" : "false");
  form.append("force", ui.uploadForce.checked ? "true" : "false");
  form.append("adapter_config", config, "adapter_config.json");
  form.append("adapter_model", model, "adapter_model.safetensors");
  if (persona) form.append("persona", persona, "persona.json");
  ui.uploadSubmit.disabled = true;
  ui.uploadProgress.hidden = false;
  ui.uploadProgress.value = 0;
  setStatus(ui.uploadStatus, "Uploading…");
  try {
    const adapter = await uploadAdapter(form, (loaded, total) => {
      const percent = Math.round((loaded / total) * 100);
      ui.uploadProgress.value = percent;
      setStatus(ui.uploadStatus,
                `Uploading… ${percent}% (${formatBytes(loaded)} of ${formatBytes(total)})`);
    });
    ui.uploadProgress.value = 100;
    const version = adapter && adapter.version ? `, version ${adapter.version}` : "";
    const rank = adapter && adapter.rank ? `, rank ${adapter.rank}` : "";
    setStatus(ui.uploadStatus, `Uploaded ${(adapter && adapter.name) || name}${version}${rank}.`,
              "good");
    ui.uploadForm.reset();
    await loadPersonas();
    await refreshAdapters();
  } catch (err) {
    ui.uploadProgress.hidden = true;
    setStatus(ui.uploadStatus, `Upload failed: ${describeError(err)}`, "bad");
  } finally {
    ui.uploadSubmit.disabled = false;
  }
}

function latin1(bytes) {
  return new TextDecoder("latin1").decode(bytes);
}

// SillyTavern stores the card as base64 JSON in a PNG text chunk named "chara" (V3: "ccv3").
function cardFromPng(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const texts = {};
  let offset = 8;
  while (offset + 8 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = latin1(bytes.subarray(offset + 4, offset + 8));
    const data = bytes.subarray(offset + 8, offset + 8 + length);
    if (type === "tEXt") {
      const zero = data.indexOf(0);
      if (zero > 0) texts[latin1(data.subarray(0, zero)).toLowerCase()] = latin1(data.subarray(zero + 1));
    }
    if (type === "IEND") break;
    offset += 12 + length;
  }
  const encoded = texts.chara || texts.ccv3;
  if (!encoded) throw new Error("this PNG holds no character card (no “chara” text chunk)");
  const binary = atob(encoded);
  return JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
}

async function readCard(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const isPng = bytes.length > 8 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e;
  let card;
  if (isPng) {
    card = cardFromPng(bytes);
  } else {
    try { card = JSON.parse(new TextDecoder().decode(bytes)); } catch (err) {
      throw new Error(`${file.name} is not valid JSON: ${err.message}`);
    }
  }
  if (!card || typeof card !== "object") throw new Error("a character card is a JSON object");
  if ((card.spec === "chara_card_v2" || card.spec === "chara_card_v3") && card.data) return card;
  if ("name" in card || "first_mes" in card) {  // a V1 card: wrap it in V2's shape
    return { spec: "chara_card_v2", spec_version: "2.0", data: card };
  }
  throw new Error("not a Character Card V2 (expected spec “chara_card_v2” and a data object)");
}

async function onImport(event) {
  event.preventDefault();
  const file = ui.cardFile.files[0];
  if (!file) {
    setStatus(ui.importStatus, "Choose a card file (.json or .png).", "bad");
    ui.cardFile.focus();
    return;
  }
  const name = ui.cardName.value.trim();
  if (name && !NAME_RE.test(name)) {
    setStatus(ui.importStatus, "The persona name takes lower-case letters, digits, '.', '_' or '-'.", "bad");
    ui.cardName.focus();
    return;
  }
  ui.importSubmit.disabled = true;
  setStatus(ui.importStatus, "Importing…");
  try {
    const card = await readCard(file);
    const body = { card };
    if (name) body.name = name;
    const adapter = ui.cardAdapter.value.trim();
    if (adapter) body.adapter = adapter;
    const persona = await api("v1/personas/import", { method: "POST", body, admin: true });
    const id = (persona && (persona.id || persona.name)) || name;
    setStatus(ui.importStatus, `Imported ${persona && persona.display_name ? persona.display_name : id}` +
              (id ? ` as “${id}”.` : "."), "good");
    ui.importForm.reset();
    await loadPersonas({ keep: state.persona && state.persona.id });
    await refreshAdapters();
  } catch (err) {
    setStatus(ui.importStatus, `Import failed: ${describeError(err)}`, "bad");
  } finally {
    ui.importSubmit.disabled = false;
  }
}

function fillAdapterNames(names) {
  const options = names || state.models.filter((m) => !isBase(m)).map((m) => m.id);
  ui.adapterNames.replaceChildren(...options.map((value) => {
    const option = document.createElement("option");
    option.value = value;
    return option;
  }));
}

async function refreshAdapters() {
  let data;
  try {
    data = await api("v1/adapters", { admin: true });
  } catch (err) {
    ui.adapterList.replaceChildren();
    setStatus(ui.adapterStatus, `Cannot list adapters: ${describeError(err)}`, "bad");
    return;
  }
  const adapters = Array.isArray(data && data.data) ? data.data : [];
  setStatus(ui.adapterStatus, adapters.length ? "" : "No adapters installed.");
  fillAdapterNames(adapters.map((a) => a.name || a.id));
  ui.adapterList.replaceChildren(...adapters.map((adapter) => {
    const name = adapter.name || adapter.id;
    const item = document.createElement("li");
    const text = document.createElement("span");
    const bits = [adapter.version ? `v${adapter.version}` : "", adapter.rank ? `rank ${adapter.rank}` : ""];
    text.textContent = `${name}${bits.some(Boolean) ? ` (${bits.filter(Boolean).join(", ")})` : ""}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "danger small";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete ${name}`);
    remove.addEventListener("click", async () => {
      if (!window.confirm(`Delete the adapter “${name}”? Chats with it stop working.`)) return;
      try {
        await api(`v1/adapters/${encodeURIComponent(name)}`, { method: "DELETE", admin: true });
        setStatus(ui.adapterStatus, `Deleted ${name}.`, "good");
        await loadPersonas();
        await refreshAdapters();
      } catch (err) {
        setStatus(ui.adapterStatus, `Delete failed: ${describeError(err)}`, "bad");
      }
    });
    item.append(text, remove);
    return item;
  }));
}

// ---------------------------------------------------------------------------------------------
// Wiring

function bindSetting(input, key) {
  input.value = stored(key);
  input.addEventListener("change", () => store(key, input.value.trim()));
  input.addEventListener("input", () => store(key, input.value.trim()));
}

function init() {
  bindSetting(ui.apiKey, STORE.apiKey);
  bindSetting(ui.adminKey, STORE.adminKey);
  bindSetting(ui.maxTokens, STORE.maxTokens);
  bindSetting(ui.temperature, STORE.temperature);
  ui.apiKey.addEventListener("change", () => loadPersonas());

  ui.composer.addEventListener("submit", (event) => { event.preventDefault(); send(); });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  ui.stop.addEventListener("click", () => { stopStream(); ui.input.focus(); });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.controller) {
      event.preventDefault();
      stopStream();
    }
  });
  ui.newChat.addEventListener("click", () => { resetConversation(); ui.input.focus(); });

  ui.uploadForm.addEventListener("submit", onUpload);
  ui.importForm.addEventListener("submit", onImport);
  ui.refreshAdapters.addEventListener("click", refreshAdapters);
  ui.adminPanel.addEventListener("toggle", () => { if (ui.adminPanel.open) refreshAdapters(); });

  loadPersonas();
}

init();
