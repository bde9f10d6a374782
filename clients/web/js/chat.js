// The conversation: sending a message and streaming the reply into it, stopping it, starting
// over, and the history sent with each request (each reply names the persona that gave it).

import { streamChat } from "./api.js";
import { ui } from "./dom.js";
import { addMessage, clearError, scrollToEnd, showError } from "./render.js";
import { state } from "./state.js";

export function resetConversation() {
  stopStream();
  state.conversation = [];
  ui.messages.replaceChildren();
  clearError();
  if (state.persona && state.persona.greeting) {
    addMessage("assistant", state.persona.greeting, state.persona, "greeting");
  }
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

export async function send() {
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

export function stopStream() {
  if (state.controller) state.controller.abort();
}
