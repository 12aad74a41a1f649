"""Local token counts, for pre-flight checks and for providers that report no usage.

OpenAI-family models use their real BPE vocabularies (o200k_base, cl100k_base,
shipped inside bpe-openai, nothing downloaded). Other models get o200k_base
counts too: a documented estimate, within a few percent for English text.
"""

from __future__ import annotations

import functools

import bpe_openai

from llmproxy.server.domain import Message

# Chat formatting overhead per message and per reply, as OpenAI documents for its chat models.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


def encoding_name(model: str) -> str | None:
    """The model's own vocabulary, or None when it has none here."""
    try:
        return bpe_openai.encoding_name_for_model(model)
    except Exception:
        return None


@functools.cache
def encoding_for(model: str) -> bpe_openai.Encoding:
    return bpe_openai.get_encoding(encoding_name(model) or "o200k_base")


def is_exact(model: str) -> bool:
    """True when `model` has its own tokenizer here, not the o200k estimate."""
    return encoding_name(model) is not None


def count_text(model: str, text: str) -> int:
    return len(encoding_for(model).encode(text)) if text else 0


def count_messages(model: str, messages: tuple[Message, ...] | list[Message]) -> int:
    encoding = encoding_for(model)
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE + len(encoding.encode(message.role.value))
        total += len(encoding.encode(message.content)) if message.content else 0
    return total
