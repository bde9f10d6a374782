// The messages of the open conversation (state.chat), drawn: one <li> per message with its
// author (avatar and name), its text as markdown (markdown.js: DOM nodes only), a status line
// (token count; "Cut short…" for a reply that did not finish) and its actions: Retry (a cut
// reply) or Regenerate (any other reply), Edit (your messages: the text turns into a form that
// resends it), Copy and Delete. drawMessages() redraws them all, drawMessage(m) one, drawText(m)
// only the text of the reply being streamed. While the newest message is in view the list keeps
// it there (scrollToEnd). The actions call the handlers given to useActions(); this module
// changes the DOM and never talks to the server.

import { avatar } from "./avatar.js";
import { ui } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { findModel, label, state } from "./state.js";
import { actionButton, element } from "./nodes.js";

const views = new Map();  // message id -> its <li>
let actions = { regenerate() {}, resend() {}, remove() {}, copy: async () => {} };
const CUT = {
  stopped: "Cut short: you stopped it",
  cut: "Cut short: the connection was lost",
  error: "Cut short: the server reported an error",
};

export function useActions(handlers) {
  actions = handlers;
}

export function isCut(message) {
  return message.role === "assistant" && Object.hasOwn(CUT, message.state || "");
}

function metaText(message) {
  const bits = [];
  if (isCut(message)) bits.push(CUT[message.state]);
  else if (message.finish === "length") bits.push("Cut short at the reply length limit");
  if (message.tokens) bits.push(`${message.tokens} tokens`);
  return bits.join(" · ");
}

function head(message) {
  const box = element("div", "message-head");
  if (message.role === "assistant") {
    const model = findModel(message.persona) || { id: message.persona || "", display_name: message.name };
    box.append(avatar(model, 28), element("span", "who", message.name || label(model)));
  } else {
    box.append(element("span", "who", "You"));
  }
  return box;
}

function actionBar(message) {
  const bar = element("div", "actions");
  const who = message.role === "user" ? "your message" : `${message.name || "the"} reply`;
  const buttons = [];
  if (message.role === "assistant" && !message.greeting) {
    buttons.push(isCut(message)
      ? actionButton("Retry", "retry", `Retry ${who}`, "retry needs-idle")
      : actionButton("Regenerate", "regenerate", `Regenerate ${who}`, "needs-idle"));
  }
  if (message.role === "user") buttons.push(actionButton("Edit", "edit", `Edit ${who}`, "needs-idle"));
  buttons.push(actionButton("Copy", "copy", `Copy ${who}`));
  if (!message.greeting) buttons.push(actionButton("Delete", "delete", `Delete ${who}`, "needs-idle"));
  bar.append(...buttons);
  bar.addEventListener("click", (event) => onAction(event, message));
  return bar;
}

async function onAction(event, message) {
  const target = event.target.closest("button[data-action]");
  if (!target) return;
  const action = target.dataset.action;
  if (action === "copy") {
    const copied = await actions.copy(message.id);
    target.textContent = copied ? "Copied" : "Copy failed";
    setTimeout(() => { target.textContent = "Copy"; }, 1500);
  } else if (action === "edit") {
    openEditor(message);
  } else if (action === "delete") {
    actions.remove(message.id);
  } else {
    actions.regenerate(message.id);
  }
}

function build(message) {
  const item = element("li");
  item.dataset.id = message.id;
  item.dataset.role = message.role;
  views.set(message.id, item);
  if (message.role === "note") {
    item.className = "message message-note";
    item.textContent = message.content;
    return item;
  }
  item.className = `message message-${message.role}${message.greeting ? " message-greeting" : ""}`;
  if (message.persona) item.dataset.persona = message.persona;
  item.dataset.state = message.state || "done";
  if (message.finish) item.dataset.finish = message.finish;
  const text = element("div", "text");
  text.append(renderMarkdown(message.content));
  const streaming = message.state === "streaming";
  if (streaming) {
    item.setAttribute("aria-busy", "true");
    if (!message.content) item.classList.add("message-pending");
  }
  item.append(head(message), text, element("div", "meta", streaming ? "" : metaText(message)));
  if (!streaming) item.append(actionBar(message));
  return item;
}

export function drawMessages() {
  views.clear();
  ui.messages.replaceChildren(...(state.chat ? state.chat.messages.map(build) : []));
  scrollToEnd(true);
}

export function drawMessage(message) {
  const old = views.get(message.id);
  const fresh = build(message);
  if (old && old.isConnected) old.replaceWith(fresh);
  else ui.messages.append(fresh);
  scrollToEnd(!old);
  return fresh;
}

export function dropMessage(id) {
  const old = views.get(id);
  if (old) old.remove();
  views.delete(id);
}

export function drawText(message) {
  const item = views.get(message.id);
  if (!item) return;
  item.querySelector(".text").replaceChildren(renderMarkdown(message.content));
  if (message.content) item.classList.remove("message-pending");
  scrollToEnd();
}

function later(message) {
  const index = state.chat.messages.indexOf(message);
  return state.chat.messages.slice(index + 1).filter((m) => m.role !== "note").length;
}

function openEditor(message) {
  const item = views.get(message.id);
  if (!item || item.querySelector(".editor")) return;
  const form = element("form", "editor");
  const box = element("textarea", "editor-input");
  box.value = message.content;
  box.rows = Math.min(8, Math.max(2, message.content.split("\n").length));
  box.setAttribute("aria-label", "Edit your message");
  const after = later(message);
  const hint = element("p", "hint", after
    ? `Sending replaces the ${after} message${after === 1 ? "" : "s"} after this one.`
    : "Enter sends, Shift+Enter adds a line, Escape cancels.");
  const send = element("button", "small", "Send");
  send.type = "submit";
  send.dataset.action = "save-edit";
  const cancel = element("button", "small secondary", "Cancel");
  cancel.type = "button";
  cancel.dataset.action = "cancel-edit";
  const row = element("div", "editor-actions");
  row.append(hint, cancel, send);
  form.append(box, row);
  const close = () => drawMessage(message);
  const submit = () => {
    const text = box.value.trim();
    if (text) actions.resend(message.id, text); else close();
  };
  form.addEventListener("submit", (event) => { event.preventDefault(); submit(); });
  cancel.addEventListener("click", close);
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); close(); }
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); submit(); }
  });
  item.querySelector(".text").replaceWith(form);
  item.querySelector(".actions").hidden = true;
  box.focus();
}

function nearEnd() {
  const box = ui.messages;
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

// Whether the newest message is in view: as the user last left the list. While it is, the list
// follows new text and keeps the end in view when it changes size (the error box below it, a
// phone's on-screen keyboard, a rotated screen).
let pinned = true;
ui.messages.addEventListener("scroll", () => { pinned = nearEnd(); }, { passive: true });
new ResizeObserver(() => { if (pinned) scrollToEnd(true); }).observe(ui.messages);

export function scrollToEnd(force = false) {
  if (force || pinned) ui.messages.scrollTop = ui.messages.scrollHeight;
  if (force) pinned = true;
}
