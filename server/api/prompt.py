"""Chat messages plus a persona card into prompt token ids, through the base's chat template.

Order: the persona's system prompt first, then the client's own leading system (or developer)
messages, merged into one system turn (several system messages, as SillyTavern sends them, are
kept in order). System messages later in the conversation stay where they are, and a card's
`post_history_instructions` (SillyTavern's "jailbreak" slot) come last, after the history.

A card's example dialogue (`example_messages`, SillyTavern's `mes_example`) follows the system
turn as real user and assistant turns between two system notes that frame them as examples of
the persona's voice, not part of this conversation; then the conversation itself.

A conversation that switched persona: an assistant message whose `name` is not the `model`
the request is for was said by another character, so it reaches the model as what it is, a
system note "<that character> (another character, not you) said: ...", never as the current
persona's own turn (which would make it copy the other's voice). Assistant messages without
a `name` are the current persona's, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.api.errors import APIError
from server.api.schemas import ChatMessage
from server.api.tools import ToolPlan, history_messages
from server.registry.personas import Persona

_SYSTEM_ROLES = ("system", "developer")
_TOOL_FIELDS = ("tool_calls", "tool_call_id", "function_call", "name")


def build_messages(messages: list[ChatMessage], persona: Persona | None,
                   tools: ToolPlan | None = None, native_tools: bool = False, *,
                   speaker: str | None = None,
                   display: Callable[[str], str] = str) -> list[dict[str, Any]]:
    """Messages as the chat template expects them: role and plain-text content, plus earlier
    tool calls and results (`server.api.tools.history_messages`). With `tools` and a template
    that does not take them (`native_tools` false), the tools' system block comes after the
    persona's and the client's system text. `speaker`: the request's `model`; `display` turns
    another speaker's name into the name it is introduced by."""
    leading: list[str] = []
    if persona is not None and persona.card.system_prompt:
        leading.append(persona.card.system_prompt)
    index = 0
    while index < len(messages) and messages[index].role in _SYSTEM_ROLES:
        leading.append(messages[index].text())
        index += 1
    if tools is not None and not native_tools:
        leading.append(tools.system_block())
    built: list[dict[str, Any]] = (
        [{"role": "system", "content": "\n\n".join(leading)}] if leading else [])
    if persona is not None:
        built += example_dialogue(persona)
    for message in messages[index:]:
        if message.role == "assistant" and message.name and message.name != speaker:
            built.append({"role": "system", "content": f"{display(message.name)} (another "
                          f"character, not you) said: {message.text()}"})
            continue
        role = "system" if message.role == "developer" else message.role
        entry: dict[str, Any] = {"role": role, "content": message.text()}
        for key in _TOOL_FIELDS:
            if (message.model_extra or {}).get(key) is not None:
                entry[key] = message.model_extra[key]  # type: ignore[index]
        built.append(entry)
    if persona is not None and persona.card.post_history_instructions:
        built.append({"role": "system", "content": persona.card.post_history_instructions})
    return history_messages(built, native_tools)


def example_dialogue(persona: Persona) -> list[dict[str, Any]]:
    """The card's example turns, framed so the model takes them as style, not as history."""
    examples = persona.card.example_messages
    if not examples:
        return []
    name = persona.card.display_name or persona.name
    return [
        {"role": "system", "content": f"Example dialogue: how {name} talks (not part of this "
                                      "conversation)."},
        *({"role": m["role"], "content": m["content"]} for m in examples),
        {"role": "system", "content": "End of the example dialogue. The conversation starts "
                                      "here."},
    ]


def encode_prompt(tokenizer: Any, messages: list[dict[str, Any]], *,
                  tools: list[dict[str, Any]] | None = None, add_generation_prompt: bool = True,
                  add_special_tokens: bool = False) -> list[int]:
    """Render the chat template (with `tools` for a template that takes them) and tokenize it
    (the template already holds special tokens)."""
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja raises TemplateError subclasses with the template's reason
        raise APIError(400, f"the model's chat template rejected these messages: {exc}",
                       param="messages", code="invalid_messages") from exc
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
