// Building page nodes from text only: never from HTML, so nothing a persona, a card or a user
// wrote can become markup. Nothing here touches the page itself.

export function element(tag, className = "", text = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

// A small text button that says what it does to assistive technology; `name` goes to
// data-action, where the list's click handler reads it.
export function actionButton(text, name, ariaLabel, className = "") {
  const node = element("button", `action ${className}`.trim(), text);
  node.type = "button";
  node.dataset.action = name;
  node.setAttribute("aria-label", ariaLabel);
  return node;
}
