// The Admin panel: adapter upload with a progress bar, character card import, and the list of
// installed adapters with their Delete buttons. Every call sends the admin key. A card file
// (.json or .png) is sent as it is, in base64: the server reads the card and says what is wrong.

import { api, fileBase64, uploadAdapter } from "./api.js";
import { ui } from "./dom.js";
import { loadPersonas } from "./personas.js";
import { describeError, fillAdapterNames, formatBytes, setStatus } from "./render.js";
import { state } from "./state.js";

const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

export async function onUpload(event) {
  event.preventDefault();
  const name = ui.uploadName.value.trim();
  const config = ui.uploadConfig.files[0];
  const model = ui.uploadModel.files[0];
  const persona = ui.uploadPersona.files[0];
  if (!NAME_RE.test(name)) {
    setStatus(ui.uploadStatus, "Give a persona name: lower-case letters, digits, '.', '_' or '-'.", "bad");
    ui.uploadName.focus();
    return;
  }
  if (!config || !model) {
    setStatus(ui.uploadStatus, "Choose adapter_config.json and adapter_model.safetensors.", "bad");
    (config ? ui.uploadModel : ui.uploadConfig).focus();
    return;
  }
  const form = new FormData();
  form.append("name", name);
  form.append("replace", ui.uploadReplace.checked ? "true" : "false");
  form.append("force", ui.uploadForce.checked ? "true" : "false");
  form.append("adapter_config", config, "adapter_config.json");
  form.append("adapter_model", model, "adapter_model.safetensors");
  if (persona) form.append("persona", persona, "persona.json");
  ui.uploadSubmit.disabled = true;
  ui.uploadProgress.hidden = false;
  ui.uploadProgress.value = 0;
  setStatus(ui.uploadStatus, "Uploading…");
  try {
    const adapter = await uploadAdapter(form, (loaded, total) => {
      const percent = Math.round((loaded / total) * 100);
      ui.uploadProgress.value = percent;
      setStatus(ui.uploadStatus,
                `Uploading… ${percent}% (${formatBytes(loaded)} of ${formatBytes(total)})`);
    });
    ui.uploadProgress.value = 100;
    const version = adapter && adapter.version ? `, version ${adapter.version}` : "";
    const rank = adapter && adapter.rank ? `, rank ${adapter.rank}` : "";
    setStatus(ui.uploadStatus, `Uploaded ${(adapter && adapter.name) || name}${version}${rank}.`,
              "good");
    ui.uploadForm.reset();
    await loadPersonas();
    await refreshAdapters();
  } catch (err) {
    ui.uploadProgress.hidden = true;
    setStatus(ui.uploadStatus, `Upload failed: ${describeError(err)}`, "bad");
  } finally {
    ui.uploadSubmit.disabled = false;
  }
}

export async function onImport(event) {
  event.preventDefault();
  const file = ui.cardFile.files[0];
  if (!file) {
    setStatus(ui.importStatus, "Choose a card file (.json or .png).", "bad");
    ui.cardFile.focus();
    return;
  }
  const name = ui.cardName.value.trim();
  if (name && !NAME_RE.test(name)) {
    setStatus(ui.importStatus, "The persona name takes lower-case letters, digits, '.', '_' or '-'.", "bad");
    ui.cardName.focus();
    return;
  }
  ui.importSubmit.disabled = true;
  setStatus(ui.importStatus, "Importing…");
  try {
    const body = { card_file: await fileBase64(file) };
    if (name) body.name = name;
    const adapter = ui.cardAdapter.value.trim();
    if (adapter) body.adapter = adapter;
    const persona = await api("v1/personas/import", { method: "POST", body, admin: true });
    const id = (persona && (persona.id || persona.name)) || name;
    setStatus(ui.importStatus, `Imported ${persona && persona.display_name ? persona.display_name : id}` +
              (id ? ` as “${id}”.` : "."), "good");
    ui.importForm.reset();
    await loadPersonas({ keep: state.persona && state.persona.id });
    await refreshAdapters();
  } catch (err) {
    setStatus(ui.importStatus, `Import failed: ${describeError(err)}`, "bad");
  } finally {
    ui.importSubmit.disabled = false;
  }
}

export async function refreshAdapters() {
  let data;
  try {
    data = await api("v1/adapters", { admin: true });
  } catch (err) {
    ui.adapterList.replaceChildren();
    setStatus(ui.adapterStatus, `Cannot list adapters: ${describeError(err)}`, "bad");
    return;
  }
  const adapters = Array.isArray(data && data.data) ? data.data : [];
  setStatus(ui.adapterStatus, adapters.length ? "" : "No adapters installed.");
  fillAdapterNames(adapters.map((a) => a.name || a.id));
  ui.adapterList.replaceChildren(...adapters.map((adapter) => {
    const name = adapter.name || adapter.id;
    const item = document.createElement("li");
    const text = document.createElement("span");
    const bits = [adapter.version ? `v${adapter.version}` : "", adapter.rank ? `rank ${adapter.rank}` : ""];
    text.textContent = `${name}${bits.some(Boolean) ? ` (${bits.filter(Boolean).join(", ")})` : ""}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "danger small";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete ${name}`);
    remove.addEventListener("click", async () => {
      if (!window.confirm(`Delete the adapter “${name}”? Chats with it stop working.`)) return;
      try {
        await api(`v1/adapters/${encodeURIComponent(name)}`, { method: "DELETE", admin: true });
        setStatus(ui.adapterStatus, `Deleted ${name}.`, "good");
        await loadPersonas();
        await refreshAdapters();
      } catch (err) {
        setStatus(ui.adapterStatus, `Delete failed: ${describeError(err)}`, "bad");
      }
    });
    item.append(text, remove);
    return item;
  }));
}
