"""gRPC server interceptors, one concern per module, composed in one fixed order here."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from llmproxy.server.app import App


def build_interceptors(app: App) -> list[grpc.aio.ServerInterceptor]:
    """The chain, outermost first."""
    return []
