// Cameo web chat: plain modern JavaScript modules, no build step, no third-party code.
//
// This is the entry module (index.html loads it with <script type="module">): it wires the
// page's controls to the modules under js/ and loads the personas. See js/*.js for the parts:
// api (HTTP, SSE), state, render (DOM), chat, personas, admin.

import { onImport, onUpload, refreshAdapters } from "./js/admin.js";
import { useKeys } from "./js/api.js";
import { resetConversation, send, stopStream } from "./js/chat.js";
import { ui } from "./js/dom.js";
import { loadPersonas } from "./js/personas.js";
import { STORE, state, store, stored } from "./js/state.js";

function bindSetting(input, key) {
  input.value = stored(key);
  input.addEventListener("change", () => store(key, input.value.trim()));
  input.addEventListener("input", () => store(key, input.value.trim()));
}

function init() {
  useKeys(() => ({ apiKey: ui.apiKey.value.trim(), adminKey: ui.adminKey.value.trim() }));
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
