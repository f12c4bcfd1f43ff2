"""A capture server to stand in for the upstream: real aiosmtpd on port 0, on the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP


@dataclass
class Captured:
    sender: str
    recipients: list[str]
    content: bytes
    mail_options: list[str]


@dataclass
class CaptureHandler:
    """Records what arrives. `rcpt_reply`/`data_reply` let a test script refusals."""

    messages: list[Captured] = field(default_factory=list)
    rcpt_reply: Callable[[str], str | None] = lambda address: None
    data_reply: Callable[[Captured], str | None] = lambda message: None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_reply(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = Captured(
            envelope.mail_from,
            list(envelope.rcpt_tos),
            envelope.original_content,
            list(envelope.mail_options),
        )
        reply = self.data_reply(message)
        if reply is not None:
            return reply
        self.messages.append(message)
        self.arrived.set()
        return "250 2.0.0 captured"

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Captured]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages


class CaptureSink:
    def __init__(self, handler: CaptureHandler | None = None, **smtp_options: Any) -> None:
        """`smtp_options` go to aiosmtpd's SMTP: tls_context, authenticator, auth_required..."""
        self.handler = handler or CaptureHandler()
        self.smtp_options = smtp_options
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(
                self.handler, enable_SMTPUTF8=True, hostname="sink.test", **self.smtp_options
            ),
            host="127.0.0.1",
            port=port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            self._server = None
