// The conversation: starting one (with the persona's greeting), opening a saved one, sending a
// message and streaming the reply into it, stopping it, and the per-message actions (retry or
// regenerate a reply, edit and resend a message of yours, copy, delete). A conversation is saved
// (store.js) from its first message of yours on, after every change and, throttled, while a reply
// streams. A reply that does not finish stays, marked cut (stopped, the connection lost, an error
// mid-stream), with a Retry button. The history sent names the persona of each reply.

import { ApiError, StreamCut, streamChat } from "./api.js";
import { noteFailure } from "./connection.js";
import { ui } from "./dom.js";
import { drawMessage, drawMessages, drawText, dropMessage, useActions } from "./messages.js";
import { clearError, showError } from "./render.js";
import { label, state } from "./state.js";
import {
  StorageFull, listConversations, loadConversation, newId, saveConversation, setCurrentId,
} from "./store.js";

const SAVE_EVERY_MS = 1000;  // while a reply streams
const TITLE_CHARS = 60;
const hooks = { saved() {}, personaGone() {} };
let lastSave = 0;

// saved(): the conversation list should redraw; personaGone(id): a request found it deleted.
export function useChatHooks(handlers) {
  Object.assign(hooks, handlers);
}

export function started(chat = state.chat) {
  return Boolean(chat && chat.messages.some((m) => m.role === "user"));
}

export function newConversation() {
  stopStream();
  const persona = state.persona;
  state.chat = { id: newId(), title: "New chat", titled: false, persona: persona && persona.id,
                 created: Date.now(), updated: Date.now(), messages: [] };
  if (persona && persona.greeting) {
    state.chat.messages.push({ id: newId("m"), role: "assistant", content: persona.greeting,
                               persona: persona.id, name: label(persona), greeting: true });
  }
  setCurrentId("");
  clearError();
  drawMessages();
  hooks.saved();
}

// Opens a saved conversation; false when it is not there (deleted, or in another browser).
export function openConversation(id) {
  const chat = loadConversation(id);
  if (!chat) return false;
  stopStream();
  state.chat = chat;
  setCurrentId(id);
  clearError();
  drawMessages();
  hooks.saved();
  return true;
}

// `kept`: save even with no message of the user's left (one that was saved, emptied).
export function save({ chat = state.chat, throttle = false, kept = false } = {}) {
  if (!chat || !(started(chat) || kept)) return;
  if (throttle && Date.now() - lastSave < SAVE_EVERY_MS) return;
  lastSave = Date.now();
  const first = chat.messages.find((m) => m.role === "user");
  if (!chat.titled && first) {
    const line = first.content.split("\n")[0].replace(/[*_`~]+/g, "").trim() || "Untitled";
    chat.title = line.length > TITLE_CHARS ? `${line.slice(0, TITLE_CHARS - 1)}…` : line;
  }
  try {
    saveConversation(chat);
    if (chat === state.chat) setCurrentId(chat.id);
  } catch (err) {
    if (!(err instanceof StorageFull)) throw err;
    showError(new Error("This browser has no room left to save the conversation: delete some "
                        + "saved conversations."), { source: "storage" });
  }
  if (!throttle) hooks.saved();
}

function historyBefore(index) {
  return state.chat.messages.slice(0, index)
    .filter((m) => (m.role === "user" || m.role === "assistant") && m.content)
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

function needPersona() {
  if (state.persona) return false;
  showError(new Error("Pick a persona first: the one of this conversation is no longer on the "
                      + "server."));
  return true;
}

export function send() {
  const text = ui.input.value.trim();
  if (!text || state.controller || needPersona()) return;
  clearError();
  ui.input.value = "";
  const message = { id: newId("m"), role: "user", content: text };
  state.chat.messages.push(message);
  drawMessage(message);
  save();
  reply();
}

// Streams a new reply at the end of the conversation, from the persona selected now.
async function reply() {
  const persona = state.persona;
  const chat = state.chat;
  const message = { id: newId("m"), role: "assistant", content: "", persona: persona.id,
                    name: label(persona), state: "streaming" };
  const body = { model: persona.id, messages: historyBefore(chat.messages.length), stream: true,
                 stream_options: { include_usage: true }, ...samplingParams() };
  chat.messages.push(message);
  drawMessage(message);
  const controller = new AbortController();
  state.controller = controller;
  state.streaming = message;
  setBusy(true);
  try {
    await streamChat(body, controller.signal, (chunk) => onChunk(message, chunk));
    message.state = "done";
  } catch (err) {
    failed(chat, message, err, persona);
  } finally {
    state.controller = null;
    state.streaming = null;
    setBusy(false);
    if (chat === state.chat && chat.messages.includes(message)) drawMessage(message);
    save({ chat });  // also when another conversation was opened meanwhile
  }
}

function onChunk(message, chunk) {
  const choice = chunk.choices && chunk.choices[0];
  const delta = choice && choice.delta && choice.delta.content;
  if (delta) {
    message.content += delta;
    drawText(message);
    save({ throttle: true });
  }
  if (choice && choice.finish_reason) message.finish = choice.finish_reason;
  if (chunk.usage) message.tokens = chunk.usage.completion_tokens;
}

function failed(chat, message, err, persona) {
  if (err.name === "AbortError") {
    message.state = "stopped";
    return;
  }
  noteFailure(err);
  const gone = err instanceof ApiError && err.code === "model_not_found";
  // A network error once the reply had begun is the connection lost mid-reply, not "cannot reach".
  const shown = err instanceof TypeError && message.content
    ? new StreamCut(`network error in the middle of the stream: ${err.message}`) : err;
  showError(shown, { persona: label(persona), onRetry: retryLast });
  if (gone) hooks.personaGone(persona.id);
  if (message.content) {
    message.state = err instanceof StreamCut || err instanceof TypeError ? "cut" : "error";
  } else {
    chat.messages.splice(chat.messages.indexOf(message), 1);
    dropMessage(message.id);
  }
}

export function stopStream() {
  if (state.controller) state.controller.abort();
}

function indexOf(id) {
  return state.chat.messages.findIndex((m) => m.id === id);
}

// Drops messages from `index` on (their views too).
function truncate(index) {
  for (const message of state.chat.messages.splice(index)) dropMessage(message.id);
}

// The reply `id` again: it and what follows it are replaced by a new reply.
function regenerate(id) {
  const index = indexOf(id);
  if (index < 0 || state.controller || needPersona()) return;
  const after = state.chat.messages.slice(index + 1).filter((m) => m.role !== "note").length;
  if (after && !window.confirm(`Regenerate this reply? The ${after} message${after === 1 ? "" : "s"} `
                               + "after it will be removed.")) return;
  clearError();
  truncate(index);
  reply();
}

// The message `id` of yours, edited: what follows it is replaced by a new reply.
function resend(id, text) {
  const index = indexOf(id);
  if (index < 0 || state.controller || needPersona()) return;
  clearError();
  const message = state.chat.messages[index];
  message.content = text;
  truncate(index + 1);
  drawMessage(message);
  save();
  reply();
}

function remove(id) {
  const index = indexOf(id);
  if (index < 0) return;
  if (state.streaming && state.streaming.id === id) stopStream();
  state.chat.messages.splice(index, 1);
  dropMessage(id);
  save({ kept: listConversations().some((c) => c.id === state.chat.id) });
}

async function copy(id) {
  const message = state.chat.messages[indexOf(id)];
  if (!message) return false;
  try {
    await navigator.clipboard.writeText(message.content);
    return true;
  } catch {
    return copyByHand(message.content);
  }
}

// Where the Clipboard API is refused (no permission, not a secure context).
function copyByHand(text) {
  const box = document.createElement("textarea");
  box.value = text;
  box.className = "visually-hidden";
  document.body.append(box);
  box.select();
  let copied = false;
  try { copied = document.execCommand("copy"); } catch { copied = false; }
  box.remove();
  return copied;
}

// "Try again" after a failed request: a reply to the last message of yours, or a cut reply anew.
export function retryLast() {
  const messages = state.chat.messages.filter((m) => m.role !== "note");
  const last = messages[messages.length - 1];
  if (!last || state.controller) return;
  if (last.role === "user") {
    if (!needPersona()) reply();
  } else if (last.role === "assistant" && !last.greeting) {
    regenerate(last.id);
  }
}

useActions({ regenerate, resend, remove, copy });
