"""The text a request is classified on, for every API shape that can carry ``MoM``.

Chat, completions, the Responses API and Anthropic's Messages API spell "what the user
said" differently; ``extract_conversation`` turns each into user turns plus the system text.
``classification_text`` then applies the documented window rule: the last user turn, and,
when it is a short follow-up, the earlier user turns before it (up to ``user_turns``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Conversation:
    user_turns: list[str] = field(default_factory=list)
    system: str = ""
    other_text: list[str] = field(default_factory=list)  # assistant and tool turns

    def all_text(self) -> str:
        return "\n".join(filter(None, [self.system, *self.other_text, *self.user_turns]))

    @property
    def last_user(self) -> str:
        return self.user_turns[-1] if self.user_turns else ""


def content_text(content: Any) -> str:
    """Text of an OpenAI/Anthropic message content: a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str) and part.get("type") in (
                    None,
                    "text",
                    "input_text",
                    "output_text",
                ):
                    parts.append(text)
                elif part.get("type") == "tool_result":
                    parts.append(content_text(part.get("content")))
        return "\n".join(parts)
    return ""


def _from_messages(messages: Any, conversation: Conversation) -> None:
    if not isinstance(messages, list):
        return
    for message in messages:
        if not isinstance(message, dict):
            continue
        text = content_text(message.get("content"))
        role = message.get("role")
        if role == "user":
            conversation.user_turns.append(text)
        elif role in ("system", "developer"):
            conversation.system = "\n".join(filter(None, [conversation.system, text]))
        elif text:
            conversation.other_text.append(text)


def extract_conversation(kind: str, path: str, body: dict[str, Any]) -> Conversation:
    conversation = Conversation()
    if kind == "chat" or path == "/v1/messages":
        _from_messages(body.get("messages"), conversation)
        system = body.get("system")  # Anthropic puts the system prompt beside the messages
        if system is not None:
            conversation.system = "\n".join(
                filter(None, [content_text(system), conversation.system])
            )
    elif kind == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = "\n".join(p for p in prompt if isinstance(p, str))
        conversation.user_turns.append(prompt if isinstance(prompt, str) else "")
    elif path == "/v1/responses":
        given = body.get("input")
        if isinstance(given, str):
            conversation.user_turns.append(given)
        else:
            _from_messages(given, conversation)
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            conversation.system = instructions
    return conversation


def classification_text(
    conversation: Conversation,
    user_turns: int,
    followup_max_tokens: int,
    count_tokens: Callable[[str], int],
) -> str:
    last = conversation.last_user
    if user_turns <= 1 or len(conversation.user_turns) < 2:
        return last
    if count_tokens(last) >= followup_max_tokens:
        return last
    earlier = conversation.user_turns[-user_turns:-1]
    return "\n".join([*earlier, last])
