"""Changes a route makes to the request body before it leaves: system prompt, reasoning."""

from __future__ import annotations

from typing import Any

from mixroute.config.schema import ReasoningConfig, SystemPromptConfig


def apply_system_prompt(body: dict[str, Any], path: str, settings: SystemPromptConfig) -> None:
    """``insert`` puts the route's prompt before any existing system text; ``replace`` drops it.

    Chat puts system text in messages; Anthropic's Messages API and the Responses API have a
    field of their own (``system`` / ``instructions``).
    """
    if path == "/v1/messages":
        _merge_field(body, "system", settings)
        return
    if path == "/v1/responses":
        _merge_field(body, "instructions", settings)
        return
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    ours = {"role": "system", "content": settings.text}
    if settings.mode == "replace":
        kept = [m for m in messages if not (isinstance(m, dict) and m.get("role") == "system")]
        body["messages"] = [ours, *kept]
    else:
        body["messages"] = [ours, *messages]


def _merge_field(body: dict[str, Any], field: str, settings: SystemPromptConfig) -> None:
    existing = body.get(field)
    if settings.mode == "replace" or not existing:
        body[field] = settings.text
    elif isinstance(existing, str):
        body[field] = settings.text + "\n\n" + existing
    elif isinstance(existing, list):  # Anthropic system blocks
        body[field] = [{"type": "text", "text": settings.text}, *existing]


def apply_reasoning(body: dict[str, Any], family: str | None, settings: ReasoningConfig) -> None:
    """Spell the route's reasoning choice the way the target model's family understands it.

    Off is sent explicitly: qwen3 thinks by default, and gpt-oss cannot stop reasoning, so
    "off" is its lowest effort.
    """
    if family == "qwen3":
        kwargs = dict(body.get("chat_template_kwargs") or {})
        kwargs["enable_thinking"] = settings.enabled
        body["chat_template_kwargs"] = kwargs
    elif family == "deepseek":
        kwargs = dict(body.get("chat_template_kwargs") or {})
        kwargs["thinking"] = settings.enabled
        body["chat_template_kwargs"] = kwargs
    elif family == "gpt-oss":
        body["reasoning_effort"] = settings.effort if settings.enabled else "low"
