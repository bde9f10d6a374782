"""Chat messages plus a persona card into prompt token ids, through the base's chat template.

Order: the persona's system prompt first, then the client's own leading system (or developer)
messages, merged into one system turn (several system messages, as SillyTavern sends them, are
kept in order). System messages later in the conversation stay where they are, and a card's
`post_history_instructions` (SillyTavern's "jailbreak" slot) come last, after the history.
"""

from __future__ import annotations

from typing import Any

from server.api.errors import APIError
from server.api.schemas import ChatMessage
from server.registry.personas import Persona

_SYSTEM_ROLES = ("system", "developer")


def build_messages(messages: list[ChatMessage], persona: Persona | None) -> list[dict[str, str]]:
    """Messages as the chat template expects them: role and plain-text content."""
    leading: list[str] = []
    if persona is not None and persona.card.system_prompt:
        leading.append(persona.card.system_prompt)
    index = 0
    while index < len(messages) and messages[index].role in _SYSTEM_ROLES:
        leading.append(messages[index].text())
        index += 1
    built = [{"role": "system", "content": "\n\n".join(leading)}] if leading else []
    for message in messages[index:]:
        role = "system" if message.role == "developer" else message.role
        built.append({"role": role, "content": message.text()})
    if persona is not None and persona.card.post_history_instructions:
        built.append({"role": "system", "content": persona.card.post_history_instructions})
    return built


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Render the chat template and tokenize it (the template already holds special tokens)."""
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja raises TemplateError subclasses with the template's reason
        raise APIError(400, f"the model's chat template rejected these messages: {exc}",
                       param="messages", code="invalid_messages") from exc
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
