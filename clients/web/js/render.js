// Drawing the page outside the messages: the persona cards (with avatars), the chat header, the
// error box (a plain sentence, a "Try again" button where one helps, the technical detail behind
// a "Details" toggle), form statuses and the adapter-name suggestions. It changes the DOM and
// never talks to the server; every text goes in as text.

import { avatar } from "./avatar.js";
import { ui } from "./dom.js";
import { explain } from "./errors.js";
import { isBase, label, state } from "./state.js";
import { element } from "./nodes.js";

export { describeError } from "./errors.js";

// `source` names who showed it, so that clearError(source) takes away only its own message.
export function showError(err, { persona = "", source = "", onRetry = null } = {}) {
  const { text, detail } = explain(err, { persona });
  const parts = [element("p", "error-text", text)];
  const buttons = element("div", "error-actions");
  if (onRetry) {
    const retry = element("button", "small", "Try again");
    retry.type = "button";
    retry.id = "error-retry";
    retry.addEventListener("click", () => { clearError(); onRetry(); });
    buttons.append(retry);
  }
  const dismiss = element("button", "small secondary", "Dismiss");
  dismiss.type = "button";
  dismiss.setAttribute("aria-label", "Dismiss this message");
  dismiss.addEventListener("click", () => clearError());
  buttons.append(dismiss);
  parts.push(buttons);
  if (detail) {
    const details = element("details", "error-details");
    details.append(element("summary", "", "Details"), element("pre", "error-detail", detail));
    parts.push(details);
  }
  ui.error.replaceChildren(...parts);
  ui.error.dataset.source = source;
  ui.error.hidden = false;
}

export function clearError(source = "") {
  if (source && ui.error.dataset.source !== source) return;
  ui.error.hidden = true;
  ui.error.replaceChildren();
  delete ui.error.dataset.source;
}

// kind: "good" (done), "bad" (failed) or "" (in progress, or nothing to say)
export function setStatus(node, text, kind = "") {
  node.textContent = text;
  node.classList.toggle("bad", kind === "bad");
  node.classList.toggle("good", kind === "good");
}

export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function personaCard(model, onSelect) {
  const id = `persona-${model.id.replace(/[^a-zA-Z0-9_-]/g, "_")}`;
  const card = element("div", "persona-card");
  card.dataset.persona = model.id;
  const radio = element("input");
  radio.type = "radio";
  radio.name = "persona";
  radio.id = id;
  radio.value = model.id;
  radio.addEventListener("change", () => { if (radio.checked) onSelect(model.id); });
  const text = element("label", "persona-text");
  text.htmlFor = id;
  const title = element("span", "persona-title");
  title.append(element("span", "persona-name", label(model)), " ",
               element("code", "persona-id", isBase(model) ? "base" : model.id));
  text.append(title);
  if (model.description || isBase(model)) {
    text.append(element("span", "persona-description",
                        model.description || `${model.id}, without a persona`));
  }
  if (model.greeting) text.append(element("q", "persona-greeting", model.greeting));
  card.append(radio, avatar(model, 40), text);
  return card;
}

// One radio card per persona; onSelect(id) is called when the user picks one.
export function renderPersonas(onSelect) {
  const list = ui.personaList;
  for (const child of [...list.children]) if (child.tagName !== "LEGEND") child.remove();
  if (!state.models.length) {
    list.append(element("p", "muted", "No personas yet: upload an adapter in the Admin panel."));
    return;
  }
  list.append(...state.models.map((model) => personaCard(model, onSelect)));
}

export function drawChatHead() {
  const model = state.persona;
  ui.currentName.textContent = model ? label(model) : "no one yet (pick a persona)";
  ui.currentDescription.textContent = (model && model.description) || "";
  ui.currentAvatar.replaceChildren(...(model ? [avatar(model, 36)] : []));
}

export function fillAdapterNames(names) {
  const options = names || state.models.filter((m) => !isBase(m)).map((m) => m.id);
  ui.adapterNames.replaceChildren(...options.map((value) => {
    const option = element("option");
    option.value = value;
    return option;
  }));
}
