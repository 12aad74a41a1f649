"""Local token counts, for pre-flight checks and for providers that report no usage.

Provider-reported usage is always the truth; these counts stand in before the
call (context-window checks, budget reservations) and when a provider reports
nothing. OpenAI-family models are counted with their real BPE vocabularies
(o200k_base, cl100k_base, shipped inside bpe-openai, nothing downloaded).

Every other model (Claude, Gemini, Llama, the mock...) is counted with
o200k_base as a documented *estimate*: no package here ships those tokenizers,
and o200k lands within roughly 10-20% of them on English text (Claude's and
Llama's vocabularies tend to produce somewhat more tokens). `is_exact()` says
which case applies, and usage estimated here is flagged `estimated`.

Counting uses the tokenizer's native `count`, which allocates no token list and
treats text that looks like a special token (``<|endoftext|>``) as plain text,
as providers do with user content.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

# The native tokenizer (a documented stub ships with it): `count` builds no token list and
# has none of the Python wrapper's 200k-token / 1M-character limits. Pinned below 0.2.
from bpe_openai import _bindings as native

from llmproxy.server.domain import Message

# Chat formatting overhead per message and per reply, as OpenAI documents for its chat models.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
ESTIMATE_ENCODING = "o200k_base"

# First match wins (so gpt-4o and gpt-4.1 precede gpt-4); a name matches its entry exactly or
# followed by '-', ':' or '.'. Mirrors tiktoken's table for the encodings bpe-openai ships.
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("gpt-oss", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
    ("davinci-002", "cl100k_base"),
    ("babbage-002", "cl100k_base"),
)

Counter = Callable[[str], int]


def _sanitize(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


@functools.cache
def encoding_name(model: str) -> str | None:
    """The model's own vocabulary, or None when no tokenizer for it ships here.

    Accepts provider-style names: `openai/gpt-4o`, `ft:gpt-4o-mini:org::id`,
    dated snapshots (`gpt-4o-2024-08-06`), Azure's `gpt-35-turbo`.
    """
    name = model.lower().rsplit("/", 1)[-1].removeprefix("ft:")
    for prefix, encoding in _PREFIXES:
        if name == prefix or name.startswith((prefix + "-", prefix + ":", prefix + ".")):
            return encoding
    return None


def is_exact(model: str) -> bool:
    """True when `model` has its own tokenizer here, not the o200k estimate."""
    return encoding_name(model) is not None


@functools.cache
def _tokenizer(encoding: str) -> native.PyTokenizer:
    return native.tokenizer_for_encoding(encoding)


def counter_for(model: str) -> Counter:
    """A `str -> int` token counter for `model`; cached, cheap to call per request."""
    return _count_fn(encoding_name(model) or ESTIMATE_ENCODING)


@functools.cache
def _count_fn(encoding: str) -> Counter:
    native_count = _tokenizer(encoding).count

    def count(text: str) -> int:
        if not text:
            return 0
        try:
            return native_count(text)
        except UnicodeEncodeError:  # lone surrogates: count them as the replacement character
            return native_count(_sanitize(text))

    return count


def warm(models: Iterable[str]) -> None:
    """Load the vocabularies these models use now (~0.1 s each), not on the first request."""
    for encoding in {encoding_name(m) or ESTIMATE_ENCODING for m in models}:
        _count_fn(encoding)("warm")


def count_text(model: str, text: str) -> int:
    return counter_for(model)(text)


def count_messages(model: str, messages: Iterable[Message]) -> int:
    """Prompt tokens as OpenAI chat models bill them: content, role and framing per message."""
    count = counter_for(model)
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE + count(message.role.value) + count(message.content)
    return total


def count_messages_until(model: str, messages: Iterable[Message], limit: int) -> int | None:
    """Like count_messages, but gives up (None) once the count passes `limit`.

    Bounds the work a huge prompt costs when all we need to know is "does it fit".
    """
    encoding = encoding_name(model) or ESTIMATE_ENCODING
    count, till = _count_fn(encoding), _tokenizer(encoding).count_till_limit
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE + count(message.role.value)
        if total > limit:
            return None
        if message.content:
            try:
                n = till(message.content, limit - total)
            except UnicodeEncodeError:
                n = till(_sanitize(message.content), limit - total)
            if n is None:
                return None
            total += n
    return total if total <= limit else None


def upper_bound(messages: Iterable[Message]) -> int:
    """A cheap bound no tokenizer here can exceed: every token covers at least one UTF-8 byte.

    A character is at most 4 UTF-8 bytes, so this costs one len() per message
    and lets the pre-flight skip counting prompts that obviously fit.
    """
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE + len(message.role.value) + 4 * len(message.content)
    return total
