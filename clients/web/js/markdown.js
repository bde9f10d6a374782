// Markdown into DOM nodes, safely: renderMarkdown(text) returns a DocumentFragment built only
// with createElement and text nodes (never innerHTML or any HTML parser), so no text, whoever
// wrote it, becomes markup: `<script>` or `<img onerror=…>` stay the characters they are.
//
// Blocks: paragraphs (a blank line between them; single newlines kept), ``` or ~~~ fenced code
// (an unclosed fence, as mid-stream, runs to the end), `-`/`*`/`+` and `1.` lists, `>` quotes,
// `#` headings (drawn as bold lines, not document headings) and `---` rules. Inline: `code`,
// **bold** and __bold__, *italic* and _italic_ (roleplay *actions* come out in italics),
// ***both***, ~~strike~~, [text](url) and bare URLs as links for http(s) and mailto only
// (a new tab, no referrer); a link to anything else stays text. Nothing else is interpreted.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const BULLET = /^ {0,3}[-*+]\s+(.*)$/;
const ORDERED = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/;
const MAX_DEPTH = 6;  // nested quotes and emphasis beyond this stay text

const INLINE = [  // in order of precedence when two start at the same place
  { re: /`([^`\n]+)`/, make: (m) => node("code", m[1]) },
  { re: /\*\*\*(?=\S)([^*]*?\S)\*\*\*/, tags: ["strong", "em"] },
  { re: /\*\*(?=\S)([\s\S]*?\S)\*\*/, tags: ["strong"] },
  { re: /(?<!\w)__(?=\S)([\s\S]*?\S)__(?!\w)/, tags: ["strong"] },
  { re: /\*([^\s*](?:[^*\n]*[^\s*])?)\*/, tags: ["em"] },
  { re: /(?<!\w)_([^\s_](?:[^_\n]*[^\s_])?)_(?!\w)/, tags: ["em"] },
  { re: /~~(?=\S)([^~\n]*?\S)~~/, tags: ["del"] },
  { re: /\[([^\]\n]+)\]\(([^()\s]+)\)/, make: (m, depth) => link(m[2], m[1], m[0], depth) },
  { re: /(?<![\w/])https?:\/\/[^\s<>"'()[\]]*[^\s<>"'()[\].,;:!?]/, make: (m) => link(m[0], null, m[0]) },
];

export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  appendBlocks(fragment, lines, 0);
  return fragment;
}

// A URL a link may point at (absolute http, https or mailto), or null.
export function safeHref(url) {
  let parsed;
  try { parsed = new URL(url); } catch { return null; }
  return ["http:", "https:", "mailto:"].includes(parsed.protocol) ? parsed.href : null;
}

function node(tag, text = "", className = "") {
  const element = document.createElement(tag);
  if (text) element.textContent = text;
  if (className) element.className = className;
  return element;
}

// A link to `url` labelled with `label` (markdown inside it drawn; null: the URL itself, as
// text), or `literal` as text when the URL is not one a link may have.
function link(url, label, literal, depth = 0) {
  const href = safeHref(url);
  if (!href) return document.createTextNode(literal);
  const anchor = node("a", label === null ? url : "");
  anchor.href = href;
  anchor.target = "_blank";
  anchor.rel = "noopener noreferrer nofollow";
  if (label !== null) appendInline(anchor, label, depth + 1);
  return anchor;
}

function startsBlock(line) {
  return FENCE.test(line) || RULE.test(line) || HEADING.test(line) || QUOTE.test(line)
    || BULLET.test(line) || ORDERED.test(line);
}

function appendBlocks(parent, lines, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
    } else if (FENCE.test(line)) {
      i = codeBlock(parent, lines, i);
    } else if (RULE.test(line)) {
      parent.append(node("hr"));
      i += 1;
    } else if (HEADING.test(line)) {
      const [, hashes, title] = HEADING.exec(line);
      parent.append(inlineBlock("p", title, `md-heading md-h${hashes.length}`, depth));
      i += 1;
    } else if (QUOTE.test(line) && depth < MAX_DEPTH) {
      i = quoteBlock(parent, lines, i, depth);
    } else if (BULLET.test(line) || ORDERED.test(line)) {
      i = listBlock(parent, lines, i, depth);
    } else {
      i = paragraph(parent, lines, i, depth);
    }
  }
}

function inlineBlock(tag, text, className, depth) {
  const element = node(tag, "", className);
  appendInline(element, text, depth);
  return element;
}

function codeBlock(parent, lines, start) {
  const [, fence, language] = FENCE.exec(lines[start]);
  let end = start + 1;
  while (end < lines.length && !lines[end].trim().startsWith(fence)) end += 1;
  const code = node("code", lines.slice(start + 1, end).join("\n"));
  if (language) code.className = `language-${language}`;
  const pre = node("pre");
  pre.append(code);
  parent.append(pre);
  return end + 1;
}

function quoteBlock(parent, lines, start, depth) {
  const inner = [];
  let i = start;
  while (i < lines.length && QUOTE.test(lines[i])) {
    inner.push(QUOTE.exec(lines[i])[1]);
    i += 1;
  }
  const quote = node("blockquote");
  appendBlocks(quote, inner, depth + 1);
  parent.append(quote);
  return i;
}

function listBlock(parent, lines, start, depth) {
  const ordered = !BULLET.test(lines[start]);
  const pattern = ordered ? ORDERED : BULLET;
  const list = node(ordered ? "ol" : "ul");
  if (ordered) {
    const first = parseInt(ORDERED.exec(lines[start])[1], 10);
    if (first !== 1) list.start = first;
  }
  const items = [];
  let i = start;
  while (i < lines.length) {
    const line = lines[i];
    const match = pattern.exec(line);
    if (match && !RULE.test(line)) {
      items.push([match[ordered ? 2 : 1]]);
    } else if (line.trim() && /^\s/.test(line) && !startsBlock(line.trim())) {
      items[items.length - 1].push(line.trim());  // an indented line continues the item
    } else if (!line.trim() && i + 1 < lines.length && pattern.test(lines[i + 1])) {
      // a blank line between two items keeps the list going
    } else {
      break;
    }
    i += 1;
  }
  for (const item of items) list.append(inlineBlock("li", item.join("\n"), "", depth));
  parent.append(list);
  return i;
}

function paragraph(parent, lines, start, depth) {
  const text = [lines[start]];
  let i = start + 1;
  while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) {
    text.push(lines[i]);
    i += 1;
  }
  parent.append(inlineBlock("p", text.join("\n"), "", depth));
  return i;
}

// The earliest inline construct in `text` (ties go to the first in INLINE), or null.
function firstMatch(text) {
  let best = null;
  for (const rule of INLINE) {
    const match = rule.re.exec(text);
    if (match && (!best || match.index < best.match.index)) best = { rule, match };
  }
  return best;
}

function appendInline(parent, text, depth) {
  let rest = text;
  while (rest) {
    const found = depth < MAX_DEPTH ? firstMatch(rest) : null;
    if (!found) {
      parent.append(document.createTextNode(rest));
      return;
    }
    const { rule, match } = found;
    if (match.index > 0) parent.append(document.createTextNode(rest.slice(0, match.index)));
    parent.append(rule.make ? rule.make(match, depth) : emphasis(rule.tags, match[1], depth));
    rest = rest.slice(match.index + match[0].length);
  }
}

function emphasis(tags, inner, depth) {
  const outer = node(tags[0]);
  let innermost = outer;
  for (const tag of tags.slice(1)) {
    const child = node(tag);
    innermost.append(child);
    innermost = child;
  }
  appendInline(innermost, inner, depth + 1);
  return outer;
}
