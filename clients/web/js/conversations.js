// The saved conversations, listed newest first in the side panel: open one (its persona is
// selected with it), rename one in place (Enter or leaving the box keeps the name, Escape
// drops it), delete one (after a confirmation; deleting the open one starts a new chat). The
// open one is marked aria-current. drawConversations() redraws the list; changes made in
// another tab arrive through the storage event.

import { newConversation, openConversation } from "./chat.js";
import { ui } from "./dom.js";
import { followConversation } from "./personas.js";
import { findModel, label, state } from "./state.js";
import { deleteConversation, listConversations, renameConversation } from "./store.js";
import { actionButton, element } from "./nodes.js";

function when(time) {
  const date = new Date(time);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
               : date.toLocaleDateString([], { day: "numeric", month: "short" });
}

function item(entry) {
  const row = element("li", "conversation");
  row.dataset.id = entry.id;
  if (state.chat && state.chat.id === entry.id) row.setAttribute("aria-current", "true");
  const open = element("button", "conversation-open");
  open.type = "button";
  open.dataset.action = "open";
  const model = findModel(entry.persona);
  open.append(element("span", "conversation-title", entry.title || "Untitled"),
              element("span", "conversation-meta",
                      `${model ? label(model) : entry.persona || ""} · ${when(entry.updated)}`));
  row.append(open, actionButton("Rename", "rename", `Rename “${entry.title}”`),
             actionButton("Delete", "delete", `Delete “${entry.title}”`));
  return row;
}

export function drawConversations() {
  const entries = listConversations();
  ui.conversationList.replaceChildren(...entries.map(item));
  ui.conversationsEmpty.hidden = entries.length > 0;
}

function rename(row, entry) {
  const box = element("input", "conversation-rename");
  box.value = entry.title;
  box.setAttribute("aria-label", `New name for “${entry.title}”`);
  box.maxLength = 120;
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    const title = box.value.trim();
    if (keep && title && title !== entry.title) {
      renameConversation(entry.id, title);
      if (state.chat && state.chat.id === entry.id) Object.assign(state.chat, { title, titled: true });
    }
    drawConversations();
    const again = ui.conversationList.querySelector(`li[data-id="${CSS.escape(entry.id)}"] .conversation-open`);
    if (again) again.focus();
  };
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); finish(true); }
    if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); finish(false); }
  });
  box.addEventListener("blur", () => finish(true));
  row.querySelector(".conversation-open").replaceWith(box);
  box.focus();
  box.select();
}

function onClick(event) {
  const target = event.target.closest("button[data-action]");
  const row = target && target.closest("li.conversation");
  if (!row) return;
  const entry = listConversations().find((c) => c.id === row.dataset.id);
  if (!entry) { drawConversations(); return; }
  if (target.dataset.action === "open") {
    if (openConversation(entry.id)) followConversation();
    document.body.classList.remove("drawer-open");
    ui.menuToggle.setAttribute("aria-expanded", "false");
    ui.input.focus();
  } else if (target.dataset.action === "rename") {
    rename(row, entry);
  } else if (window.confirm(`Delete the conversation “${entry.title}”? This cannot be undone.`)) {
    deleteConversation(entry.id);
    if (state.chat && state.chat.id === entry.id) newConversation();
    drawConversations();
  }
}

export function watchConversations() {
  ui.conversationList.addEventListener("click", onClick);
  document.addEventListener("cameo:personas", drawConversations);  // persona names
  window.addEventListener("storage", (event) => {
    if (event.key === null || (event.key || "").startsWith("cameo.conversation")) drawConversations();
  });
}
