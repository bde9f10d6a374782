// Drawing the page: the persona cards, the messages of the conversation (each one drawn is also
// recorded in state.conversation), errors and form statuses, the adapter-name suggestions. It
// changes the DOM and never talks to the server.

import { ApiError } from "./api.js";
import { ui } from "./dom.js";
import { isBase, label, state } from "./state.js";

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

export function showError(err) {
  ui.error.textContent = describeError(err);
  ui.error.hidden = false;
}

export function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

// kind: "good" (done), "bad" (failed) or "" (in progress, or nothing to say)
export function setStatus(element, text, kind = "") {
  element.textContent = text;
  element.classList.toggle("bad", kind === "bad");
  element.classList.toggle("good", kind === "good");
}

export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

// One radio card per persona; onSelect(id) is called when the user picks one.
export function renderPersonas(onSelect) {
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
    radio.addEventListener("change", () => { if (radio.checked) onSelect(model.id); });

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

export function addMessage(role, content, persona = null, kind = "") {
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

export function addNote(text) {
  const item = document.createElement("li");
  item.className = "message message-note";
  item.dataset.role = "note";
  item.textContent = text;
  ui.messages.append(item);
  state.conversation.push({ role: "note", content: text, el: item, note: true });
  scrollToEnd(true);
}

export function scrollToEnd(force = false) {
  const box = ui.messages;
  const nearEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  if (force || nearEnd) box.scrollTop = box.scrollHeight;
}

export function fillAdapterNames(names) {
  const options = names || state.models.filter((m) => !isBase(m)).map((m) => m.id);
  ui.adapterNames.replaceChildren(...options.map((value) => {
    const option = document.createElement("option");
    option.value = value;
    return option;
  }));
}
