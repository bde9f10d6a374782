// Saved conversations, in this browser's localStorage: an index ("cameo.conversations", a JSON
// list of { id, title, persona, updated }, newest first), one key per conversation
// ("cameo.conversation.<id>", the whole conversation as JSON) and the one open last
// ("cameo.current"). A conversation is { id, title, titled (renamed by the user), persona (the
// one that speaks now), created, updated, messages: [{ id, role ("user", "assistant" or
// "note"), content, persona?, greeting?, state?, finish?, tokens? }] }.
//
// saveConversation throws StorageFull when the browser refuses the write (its quota); loads
// never throw: an unreadable entry reads as missing. A reply that was streaming when the page
// went away reads back as cut. Plain data: no DOM, no network.

const INDEX = "cameo.conversations";
const CURRENT = "cameo.current";
const PREFIX = "cameo.conversation.";

export class StorageFull extends Error {}

function read(key, fallback) {
  try {
    const text = localStorage.getItem(key);
    return text ? JSON.parse(text) : fallback;
  } catch {
    return fallback;
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (err) {
    throw new StorageFull(`the browser refused to save (${err && err.name})`);
  }
}

export function newId(prefix = "c") {
  const random = crypto.getRandomValues(new Uint32Array(2));
  return `${prefix}${Date.now().toString(36)}${random[0].toString(36)}${random[1].toString(36)}`;
}

export function listConversations() {
  const index = read(INDEX, []);
  return Array.isArray(index) ? index.filter((entry) => entry && typeof entry.id === "string") : [];
}

export function loadConversation(id) {
  const conversation = read(PREFIX + id, null);
  if (!conversation || !Array.isArray(conversation.messages)) return null;
  conversation.messages = conversation.messages
    .filter((m) => m && typeof m.content === "string" && ["user", "assistant", "note"].includes(m.role))
    .map((m) => (m.state === "streaming" ? { ...m, state: "cut" } : m));
  return conversation;
}

export function saveConversation(conversation) {
  conversation.updated = Date.now();
  write(PREFIX + conversation.id, conversation);
  const { id, title, persona, updated } = conversation;
  write(INDEX, [{ id, title, persona, updated }, ...listConversations().filter((c) => c.id !== id)]);
}

export function renameConversation(id, title) {
  const conversation = loadConversation(id);
  if (!conversation) return;
  conversation.title = title;
  conversation.titled = true;
  write(PREFIX + id, conversation);
  write(INDEX, listConversations().map((c) => (c.id === id ? { ...c, title } : c)));
}

export function deleteConversation(id) {
  try {
    localStorage.removeItem(PREFIX + id);
    localStorage.setItem(INDEX, JSON.stringify(listConversations().filter((c) => c.id !== id)));
    if (currentId() === id) localStorage.removeItem(CURRENT);
  } catch { /* storage unavailable: nothing was saved either */ }
}

export function currentId() {
  try { return localStorage.getItem(CURRENT) || ""; } catch { return ""; }
}

export function setCurrentId(id) {
  try {
    if (id) localStorage.setItem(CURRENT, id); else localStorage.removeItem(CURRENT);
  } catch { /* private mode */ }
}
