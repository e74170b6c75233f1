"""The engine's tokenization of a request, so it can be matched against the block index.

The index keys blocks by their token ids, so the gateway must see a request's prompt as
the engine will: ``Tokenizer`` is that contract, ``HFTokenizer`` implements it for real
models (``tokenizer.json`` plus a ``ChatTemplateRule``) and ``SimTokenizer`` for the
simulator. ``tokenize_request`` keeps long prompts off the event loop. A tokenization that
differs from the engine's costs matches, never a wrong answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol


class Tokenizer(Protocol):
    """The engine's tokenization of a request; any difference costs matches, not answers."""

    def encode_text(self, text: str) -> list[int]:
        """A completion prompt, as the engine tokenizes ``/v1/completions``."""
        ...

    def encode_chat(self, messages: Sequence[Any]) -> list[int]:
        """Chat messages rendered by the model's template, with the generation prompt."""
        ...


@dataclass(frozen=True, slots=True)
class ChatTemplateRule:
    """A chat template written as format strings (``{role}``, ``{content}``).

    Real templates are Jinja programs; most chat models' come down to this shape, which
    keeps the gateway free of a template engine. Text parts of a list content are joined
    with ``part_separator``; other parts (images, audio) make the request unmatchable.
    """

    message: str
    generation_prompt: str
    prefix: str = ""
    part_separator: str = ""

    @classmethod
    def chatml(cls) -> ChatTemplateRule:
        """ChatML (Qwen and many others)."""
        return cls(
            message="<|im_start|>{role}\n{content}<|im_end|>\n",
            generation_prompt="<|im_start|>assistant\n",
        )

    @classmethod
    def llama3(cls) -> ChatTemplateRule:
        """Llama 3 instruct (without the date system preamble some of its templates add)."""
        return cls(
            message="<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
            generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
            prefix="<|begin_of_text|>",
        )

    def render(self, messages: Sequence[Any]) -> str:
        parts = [self.prefix]
        for message in messages:
            if not isinstance(message, Mapping):
                raise ValueError("each message must be an object")
            content = message.get("content")
            if isinstance(content, list):
                texts = []
                for part in content:
                    if not isinstance(part, Mapping) or part.get("type") != "text":
                        raise ValueError("only text parts can be rendered")
                    texts.append(str(part.get("text", "")))
                content = self.part_separator.join(texts)
            elif content is None:
                content = ""
            parts.append(self.message.format(role=message.get("role"), content=content))
        parts.append(self.generation_prompt)
        return "".join(parts)


class HFTokenizer:
    """A real model's tokenizer: its ``tokenizer.json`` and a ``ChatTemplateRule``.

    As vLLM does, a rendered chat is encoded without adding special tokens (the template
    writes them) and a completion prompt with them. Truncation and padding that a
    tokenizer.json may carry are turned off: the engine sees the whole prompt.
    """

    def __init__(self, tokenizer_json: str, template: ChatTemplateRule) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self._tokenizer = RustTokenizer.from_file(tokenizer_json)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._template = template

    def encode_text(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=True).ids)

    def encode_chat(self, messages: Sequence[Any]) -> list[int]:
        rendered = self._template.render(messages)
        return list(self._tokenizer.encode(rendered, add_special_tokens=False).ids)


class SimTokenizer:
    """The simulator's tokenizer and chat template, imported from ``mixroute.sim``.

    This is the engine's own tokenizer, exactly as loading a model's tokenizer.json is for
    a real vLLM: the gateway depends on the simulator's code only when it is configured to
    front simulated replicas.
    """

    def __init__(self) -> None:
        from mixroute.sim import tokenizer as sim_tokenizer

        self._encode = sim_tokenizer.encode
        self._render = sim_tokenizer.render_messages

    def encode_text(self, text: str) -> list[int]:
        return self._encode(text)

    def encode_chat(self, messages: Sequence[Any]) -> list[int]:
        return self._encode(self._render(messages))


def request_token_ids(tokenizer: Tokenizer, body: Mapping[str, Any]) -> list[int] | None:
    """The prompt token ids of a chat or completion request body; None when unknown."""
    messages = body.get("messages")
    try:
        if isinstance(messages, list):
            return tokenizer.encode_chat(messages)
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return tokenizer.encode_text(prompt)
        if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
            return list(prompt)
    except (ValueError, TypeError, KeyError):
        return None
    return None  # a batch of prompts, or nothing to tokenize


def _prompt_chars(body: Mapping[str, Any]) -> int:
    messages = body.get("messages")
    if isinstance(messages, list):
        total = 0
        for message in messages:
            content = message.get("content") if isinstance(message, Mapping) else None
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, list):
                total += sum(
                    len(text)
                    for p in content
                    if isinstance(p, Mapping) and isinstance(text := p.get("text"), str)
                )
        return total
    prompt = body.get("prompt")
    return len(prompt) if isinstance(prompt, str) else 0


async def tokenize_request(
    tokenizer: Tokenizer,
    body: Mapping[str, Any],
    *,
    executor: Executor | None = None,
    offload_chars: int = 1024,
) -> list[int] | None:
    """``request_token_ids`` that keeps the event loop free for long prompts.

    Tokenizing costs about 0.15-1 µs per character (simulator / HF tokenizers here), so
    prompts past ``offload_chars`` (a few hundred µs) go to ``executor`` (the loop's default
    thread pool when None); shorter ones are cheaper inline than a thread hand-off.
    """
    if _prompt_chars(body) <= offload_chars:
        return request_token_ids(tokenizer, body)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, request_token_ids, tokenizer, body)
