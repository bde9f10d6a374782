// The persona list from GET v1/models and the selection. Picking a persona before the first
// message of yours starts over with its greeting; in the middle of a conversation it keeps the
// conversation and notes who speaks now. loadPersonas() reports what it learnt to the header
// (connection.js); a persona that a request found deleted is dropped by reloading the list
// (loadPersonas({ gone })), and a conversation whose persona is gone keeps no selection until
// the user picks one. Each new list is announced with a "cameo:personas" event on document.

import { ApiError, api } from "./api.js";
import { newConversation, save, started } from "./chat.js";
import { noteFailure, setConnection } from "./connection.js";
import { ui } from "./dom.js";
import { drawMessage, drawMessages } from "./messages.js";
import { clearError, drawChatHead, fillAdapterNames, renderPersonas, showError } from "./render.js";
import { STORE, findModel, isBase, label, state, store, stored } from "./state.js";
import { newId } from "./store.js";

function failed(err) {
  if (err instanceof ApiError && err.status === 503) {
    setConnection("loading");  // the connection probe reloads the list once the server is ready
    return;
  }
  if (err instanceof ApiError && err.status === 401) setConnection("auth");
  else if (err instanceof ApiError) setConnection("error");
  else noteFailure(err);
  if (!state.models.length) {
    const note = ui.personaList.querySelector("p.muted");
    if (note) note.textContent = "Could not load the personas (see the message by the chat).";
  }
  showError(err, { source: "personas" });
}

export async function loadPersonas({ keep, gone } = {}) {
  let data;
  try {
    data = await api("v1/models");
  } catch (err) {
    failed(err);
    return;
  }
  clearError("personas");
  const models = (Array.isArray(data && data.data) ? data.data : []).filter((m) => m.id !== gone);
  // Personas first (by name), the base model last.
  state.models = [...models.filter((m) => !isBase(m)).sort((a, b) => a.id.localeCompare(b.id)),
                  ...models.filter(isBase)];
  const count = state.models.filter((m) => !isBase(m)).length;
  setConnection("online", `Connected · ${count} persona${count === 1 ? "" : "s"}`);
  renderPersonas(selectPersona);
  fillAdapterNames();
  const wanted = keep || (state.chat && state.chat.persona) || (state.persona && state.persona.id)
    || stored(STORE.persona);
  const pick = findModel(wanted) || (started() ? null : state.models[0]);
  if (pick) {
    selectPersona(pick.id, { announce: false });
  } else {
    unselect();
  }
  if (!state.controller && started()) drawMessages();  // avatars and names from the new list
  document.dispatchEvent(new Event("cameo:personas"));
}

function unselect() {
  state.persona = null;
  for (const radio of ui.personaList.querySelectorAll("input[name=persona]")) radio.checked = false;
  markSelected("");
  drawChatHead();
}

function markSelected(id) {
  for (const card of ui.personaList.querySelectorAll(".persona-card")) {
    card.classList.toggle("selected", card.dataset.persona === id);
  }
}

export function selectPersona(id, { announce = true } = {}) {
  const model = findModel(id);
  if (!model) return;
  const previous = state.persona;
  state.persona = model;
  store(STORE.persona, model.id);
  const radio = ui.personaList.querySelector(`input[name="persona"][value="${CSS.escape(id)}"]`);
  if (radio && !radio.checked) radio.checked = true;
  markSelected(id);
  drawChatHead();
  if (!started()) {
    newConversation();
    return;
  }
  const switched = state.chat.persona !== model.id;
  state.chat.persona = model.id;
  if (announce && switched && (!previous || previous.id !== model.id)) {
    const note = { id: newId("m"), role: "note", content: `Now talking to ${label(model)}.` };
    state.chat.messages.push(note);
    drawMessage(note);
  }
  if (switched) save();
}

// After a saved conversation was opened: select its persona, or none when it is gone.
export function followConversation() {
  const id = state.chat && state.chat.persona;
  if (findModel(id)) {
    selectPersona(id, { announce: false });
    return;
  }
  if (!state.models.length) return;  // the list is not loaded yet: loadPersonas will do it
  unselect();
  showError(new Error(`The persona of this conversation (“${id}”) is no longer on the server. `
                      + "Pick another one to go on."));
}
