// The server's HTTP API: JSON calls, the chat completion stream (SSE), the readiness probe, the
// adapter upload (XMLHttpRequest, for its progress events), and errors in the API's shape
// ({"error": {"message", "type", "param", "code"}}) as ApiError. A network failure is the
// TypeError fetch throws; a stream that ends before its `[DONE]` throws StreamCut. Relative
// URLs, so the page works at "/" and behind a path prefix alike. No DOM: the keys come from
// useKeys().

export class ApiError extends Error {
  constructor(status, message, code = null, param = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

function errorFromBody(status, body, fallback) {
  const error = body && typeof body === "object" ? body.error : null;
  if (error && typeof error === "object") {
    return new ApiError(status, error.message || fallback, error.code || null, error.param || null);
  }
  if (body && typeof body.detail === "string") return new ApiError(status, body.detail);
  return new ApiError(status, fallback || `HTTP ${status}`);
}

export async function errorFromResponse(response) {
  const text = await response.text().catch(() => "");
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON */ }
  return errorFromBody(response.status, body, text.slice(0, 300) || response.statusText);
}

// The reply stream ended (the connection closed) before the server said it was done.
export class StreamCut extends Error {
  constructor(message = "the stream ended before the reply was complete") {
    super(message);
    this.name = "StreamCut";
  }
}

let keys = () => ({ apiKey: "", adminKey: "" });

// Where the keys come from: a function returning { apiKey, adminKey }, asked on every call.
export function useKeys(source) {
  keys = source;
}

function authHeaders(admin = false) {
  const { apiKey, adminKey } = keys();
  const key = (admin && adminKey) || apiKey;
  return key ? { Authorization: `Bearer ${key}` } : {};
}

export async function api(path, { method = "GET", body, admin = false } = {}) {
  const headers = { ...authHeaders(admin) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await errorFromResponse(response);
  return response.status === 204 ? null : response.json();
}

// GET /ready: resolves to null when the server is ready, to the ApiError saying why not (503
// while the model loads); a network failure rejects with fetch's TypeError.
export async function probeReady(signal) {
  const response = await fetch("ready", { cache: "no-store", signal });
  return response.ok ? null : errorFromResponse(response);
}

// POST a streaming chat completion and call onChunk with each parsed SSE event. Resolves once
// the server sent `[DONE]`; a body that ends without it rejects with StreamCut.
export async function streamChat(body, signal, onChunk) {
  const response = await fetch("v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await errorFromResponse(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  const dispatch = () => {
    if (!data.length) return false;
    const payload = data.join("\n");
    data = [];
    if (payload.trim() === "[DONE]") return true;
    let chunk;
    try { chunk = JSON.parse(payload); } catch {
      throw new ApiError(0, `The server sent an unreadable event: ${payload.slice(0, 120)}`);
    }
    if (chunk && chunk.error) throw errorFromBody(500, chunk, "The stream failed");
    onChunk(chunk);
    return false;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          if (dispatch()) return;
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        }  // comments (": ping") and other fields are ignored
      }
    }
    if (dispatch()) return;
    throw new StreamCut();
  } finally {
    reader.cancel().catch(() => {});
  }
}

export function uploadAdapter(form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "v1/adapters");
    for (const [key, value] of Object.entries(authHeaders(true))) xhr.setRequestHeader(key, value);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(errorFromBody(xhr.status, body, xhr.responseText.slice(0, 300) || xhr.statusText));
    };
    xhr.onerror = () => reject(new TypeError("the upload failed (network error)"));
    xhr.onabort = () => reject(new Error("the upload was cancelled"));
    xhr.send(form);
  });
}

// A file's bytes in base64, as POST v1/personas/import takes a card file (the server reads it).
export async function fileBase64(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let binary = "";
  for (let start = 0; start < bytes.length; start += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(start, start + 0x8000));
  }
  return btoa(binary);
}
