"""Maps a provider `type` from config to the adapter class that speaks its API.

Adding a provider is one new module plus one line here.
"""

from __future__ import annotations

import importlib

from llmproxy.server.providers.base import Provider

# type name -> "module:Class", imported on first use so an unused adapter costs nothing.
PROVIDER_TYPES: dict[str, str] = {
    "mock": "llmproxy.server.providers.mock:MockProvider",
    "anthropic": "llmproxy.server.providers.anthropic:AnthropicProvider",
    "gemini": "llmproxy.server.providers.gemini:GeminiProvider",
    "cohere": "llmproxy.server.providers.cohere:CohereProvider",
    "openai_compatible": "llmproxy.server.providers.openai_compat:OpenAICompatibleProvider",
    "openai": "llmproxy.server.providers.openai:OpenAIProvider",
    "azure_openai": "llmproxy.server.providers.azure_openai:AzureOpenAIProvider",
    "mistral": "llmproxy.server.providers.mistral:MistralProvider",
    "ollama": "llmproxy.server.providers.ollama:OllamaProvider",
    "bedrock": "llmproxy.server.providers.bedrock:BedrockProvider",
}


def provider_class(type_name: str) -> type[Provider]:
    try:
        target = PROVIDER_TYPES[type_name]
    except KeyError:
        known = ", ".join(sorted(PROVIDER_TYPES))
        raise ValueError(f"unknown provider type {type_name!r}; known types: {known}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
