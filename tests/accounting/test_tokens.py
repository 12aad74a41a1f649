"""Local token counts equal the real tokenizers' on known strings, and never fall back to len/4."""

from __future__ import annotations

import random

import bpe_openai
import pytest

from llmproxy.server.core import tokens
from llmproxy.server.domain import Message, Role

# Token ids published for these strings (tiktoken's README and OpenAI's tokenizer page).
KNOWN = [
    (
        "o200k_base",
        "The quick brown fox jumps over the lazy dog.",
        [976, 4853, 19705, 68347, 65613, 1072, 290, 29082, 6446, 13],
    ),
    ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
    ("cl100k_base", "hello world", [15339, 1917]),
    ("o200k_base", "hello world", [24912, 2375]),
]
MODEL_FOR = {"o200k_base": "gpt-4o", "cl100k_base": "gpt-4"}
STRINGS = [
    "",
    "Hello, world!",
    "antidisestablishmentarianism",
    "日本語のテキストも数えます 🙂👍🏽",
    "   leading spaces\n\n\ttabs and\r\nnewlines  ",
    "def f(x):\n    return x ** 2  # code counts too\n",
    "text with <|endoftext|> inside is plain text, as providers treat it",
    "1234567890 3.14159 -42 1e10",
]


@pytest.mark.parametrize(("encoding", "text", "ids"), KNOWN)
def test_known_strings_have_their_published_counts(encoding, text, ids):
    assert bpe_openai.get_encoding(encoding).encode(text) == ids
    assert tokens.count_text(MODEL_FOR[encoding], text) == len(ids)


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4", "claude-3-5-sonnet"])
@pytest.mark.parametrize("text", STRINGS)
def test_counts_equal_the_tokenizers(model, text):
    encoding = bpe_openai.get_encoding(tokens.encoding_name(model) or "o200k_base")
    assert tokens.count_text(model, text) == len(encoding.encode_ordinary(text))


def test_long_prompts_are_counted_past_the_python_wrappers_limits():
    text = "The quick brown fox jumps over the lazy dog. " * 25_000  # > 200k tokens, > 1M chars
    assert tokens.count_text("gpt-4o", text) == 250_001


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("openai/gpt-4.1-mini", "o200k_base"),
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-5.1", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("claude-3-5-sonnet", None),
        ("gemini-2.0-flash", None),
        ("mock-fast", None),
        ("o1x", None),
    ],
)
def test_model_names_map_to_their_vocabulary(model, encoding):
    assert tokens.encoding_name(model) == encoding
    assert tokens.is_exact(model) is (encoding is not None)


def test_message_counts_follow_openais_chat_framing():
    messages = [Message(Role.SYSTEM, "Be brief."), Message(Role.USER, "hello world")]
    enc = bpe_openai.get_encoding("o200k_base")
    expected = 3 + sum(
        3 + len(enc.encode(m.role.value)) + len(enc.encode(m.content)) for m in messages
    )
    assert tokens.count_messages("gpt-4o", messages) == expected == 16


def test_bounded_count_stops_at_the_limit():
    messages = [Message(Role.USER, "hello world")]
    assert tokens.count_messages_until("gpt-4o", messages, 9) == 9
    assert tokens.count_messages_until("gpt-4o", messages, 8) is None
    huge = [Message(Role.USER, "word " * 1_000_000)]
    assert tokens.count_messages_until("gpt-4o", huge, 1000) is None


def test_upper_bound_is_never_below_the_count():
    rng = random.Random(7)
    alphabet = "abcdefghij XYZ\n\t🙂日本語éß<|>0123456789"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        messages = [Message(Role.USER, text)]
        for model in ("gpt-4o", "gpt-4"):
            assert tokens.count_messages(model, messages) <= tokens.upper_bound(messages)


def test_lone_surrogates_do_not_break_counting():
    assert tokens.count_text("gpt-4o", "a\ud800b") == tokens.count_text("gpt-4o", "a?b")
