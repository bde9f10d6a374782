// The persona list from GET v1/models (retried while the model loads) and the selection: a
// switch in the middle of a conversation keeps it and notes who speaks now.

import { ApiError, api } from "./api.js";
import { resetConversation } from "./chat.js";
import { ui } from "./dom.js";
import { addNote, clearError, fillAdapterNames, renderPersonas, showError } from "./render.js";
import { STORE, isBase, label, state, store, stored } from "./state.js";

export async function loadPersonas({ keep } = {}) {
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
  renderPersonas(selectPersona);
  fillAdapterNames();
  const wanted = keep || (state.persona && state.persona.id) || stored(STORE.persona);
  const pick = state.models.find((m) => m.id === wanted) || state.models[0];
  if (pick) selectPersona(pick.id, { announce: false });
}

export function selectPersona(id, { announce = true } = {}) {
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
