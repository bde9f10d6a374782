// Persona pictures. avatar(model, size) returns a decorative <span class="avatar"> holding the
// persona's initials (on a colour picked from its id); when the card's `avatar` is an image this
// page may show, the picture is drawn over them on a <canvas>.
//
// The page's CSP (`default-src 'self'`, so images from 'self' only) refuses <img src="data:…">
// and other hosts, and it stays as strict as it is: a `data:image/(png|jpeg|webp|gif);base64`
// avatar is checked (imageSource), decoded here and drawn with createImageBitmap, which loads
// nothing, so there is nothing for the CSP to refuse. An http(s) avatar would need the CSP to
// allow that host, so it shows the initials, as does any other value, one over AVATAR_LIMIT
// characters, or bytes that do not decode as an image. No URL is ever put into markup.

import { label } from "./state.js";

export const AVATAR_LIMIT = 256 * 1024;  // characters, the server's limit too
const DATA_URL = /^data:image\/(png|jpeg|webp|gif);base64,([A-Za-z0-9+/]+={0,2})$/;
const HUES = 8;  // .avatar-hue-0 … -7 in style.css
const bitmaps = new Map();  // avatar URL -> Promise<ImageBitmap | null>

// { type, base64 } of an avatar the page can draw, or null.
export function imageSource(url) {
  if (typeof url !== "string" || url.length > AVATAR_LIMIT) return null;
  const match = DATA_URL.exec(url);
  return match ? { type: `image/${match[1]}`, base64: match[2] } : null;
}

export function initials(name) {
  const words = String(name || "").match(/[\p{L}\p{N}]+/gu) || ["?"];
  const letters = words.length > 1 ? [words[0], words[words.length - 1]] : [words[0]];
  return letters.map((word) => [...word][0]).join("").toUpperCase();
}

function hue(id) {
  let hash = 0;
  for (const char of String(id)) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return hash % HUES;
}

export function avatar(model, size = 36, name = "") {
  const box = document.createElement("span");
  box.className = `avatar avatar-hue-${hue(model ? model.id : name)}`;
  box.setAttribute("aria-hidden", "true");
  box.dataset.size = String(size);
  const letters = document.createElement("span");
  letters.className = "avatar-initials";
  letters.textContent = initials(name || (model && model.display_name) || label(model));
  box.append(letters);
  const source = imageSource(model && model.avatar);
  if (source) drawInto(box, model.avatar, source, size);
  return box;
}

function decode(source) {
  const bytes = Uint8Array.from(atob(source.base64), (char) => char.charCodeAt(0));
  return createImageBitmap(new Blob([bytes], { type: source.type })).catch(() => null);
}

async function drawInto(box, url, source, size) {
  if (!bitmaps.has(url)) bitmaps.set(url, Promise.resolve().then(() => decode(source)).catch(() => null));
  const bitmap = await bitmaps.get(url);
  if (!bitmap) return;
  const scale = Math.max(1, Math.ceil(window.devicePixelRatio || 1));
  const canvas = document.createElement("canvas");
  canvas.className = "avatar-image";
  canvas.width = canvas.height = size * scale;
  const side = Math.min(bitmap.width, bitmap.height);  // the centre square, like object-fit: cover
  const context = canvas.getContext("2d");
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side,
                    0, 0, canvas.width, canvas.height);
  box.append(canvas);
  box.classList.add("has-image");
}
