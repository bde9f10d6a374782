// Cameo web chat: plain modern JavaScript modules, no build step, no third-party code.
//
// This is the entry module (index.html loads it with <script type="module">): it wires the
// page's controls to the modules under js/, reopens the conversation open last, loads the
// personas and starts watching the connection. See js/*.js for the parts: api (HTTP, SSE),
// state, store (saved conversations), markdown, avatar, errors, render, messages, chat,
// conversations, personas, connection, admin.

import { onImport, onUpload, refreshAdapters } from "./js/admin.js";
import { useKeys } from "./js/api.js";
import { newConversation, openConversation, send, stopStream, useChatHooks } from "./js/chat.js";
import { watchConnection } from "./js/connection.js";
import { drawConversations, watchConversations } from "./js/conversations.js";
import { ui } from "./js/dom.js";
import { loadPersonas } from "./js/personas.js";
import { STORE, state, store, stored } from "./js/state.js";
import { currentId } from "./js/store.js";

function bindSetting(input, key) {
  input.value = stored(key);
  input.addEventListener("change", () => store(key, input.value.trim()));
  input.addEventListener("input", () => store(key, input.value.trim()));
}

// The side panel as a drawer (phones): the Menu button opens it, Escape or a tap beside closes it.
function setDrawer(open) {
  document.body.classList.toggle("drawer-open", open);
  ui.menuToggle.setAttribute("aria-expanded", String(open));
  ui.drawerBackdrop.hidden = !open;
}

function drawerOpen() {
  return document.body.classList.contains("drawer-open");
}

function bindComposer() {
  ui.composer.addEventListener("submit", (event) => { event.preventDefault(); send(); });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  ui.stop.addEventListener("click", () => { stopStream(); ui.input.focus(); });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    if (drawerOpen()) {
      event.preventDefault();
      setDrawer(false);
      ui.menuToggle.focus();
    } else if (state.controller) {
      event.preventDefault();
      stopStream();
    }
  });
  ui.newChat.addEventListener("click", () => { newConversation(); setDrawer(false); ui.input.focus(); });
  ui.menuToggle.addEventListener("click", () => setDrawer(!drawerOpen()));
  ui.drawerBackdrop.addEventListener("click", () => setDrawer(false));
}

function init() {
  useKeys(() => ({ apiKey: ui.apiKey.value.trim(), adminKey: ui.adminKey.value.trim() }));
  bindSetting(ui.apiKey, STORE.apiKey);
  bindSetting(ui.adminKey, STORE.adminKey);
  bindSetting(ui.maxTokens, STORE.maxTokens);
  bindSetting(ui.temperature, STORE.temperature);
  ui.apiKey.addEventListener("change", () => loadPersonas());
  bindComposer();

  ui.uploadForm.addEventListener("submit", onUpload);
  ui.importForm.addEventListener("submit", onImport);
  ui.refreshAdapters.addEventListener("click", refreshAdapters);
  ui.adminPanel.addEventListener("toggle", () => { if (ui.adminPanel.open) refreshAdapters(); });

  useChatHooks({ saved: drawConversations, personaGone: (id) => loadPersonas({ gone: id }) });
  watchConversations();
  const last = currentId();
  if (!(last && openConversation(last))) newConversation();
  drawConversations();
  watchConnection(() => loadPersonas());
  loadPersonas();
}

init();
