"""Listen: the SMTP front door (aiosmtpd on the relay's own event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path

from smtpguard.config import ServerConfig
from smtpguard.listen import replies
from smtpguard.listen.clients import ClientAllowlist
from smtpguard.listen.handler import Intake, Receipt, RelayHandler
from smtpguard.listen.session import GuardSMTP, ListenerSettings, SessionRegistry

__all__ = [
    "GuardSMTP",
    "Intake",
    "Listener",
    "ListenerSettings",
    "Receipt",
    "RelayHandler",
    "SessionRegistry",
    "listener_settings",
]


def _server_tls_context(certificate: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    return context


def listener_settings(config: ServerConfig) -> ListenerSettings:
    tls_context = None
    if config.tls is not None:
        tls_context = _server_tls_context(config.tls.certificate, config.tls.key)
    return ListenerSettings(
        hostname=config.hostname,
        allowlist=ClientAllowlist(config.allowed_clients),
        max_message_size=config.max_message_size,
        max_recipients=config.max_recipients,
        # The limit is the relay's: each of its processes takes an equal share.
        max_sessions=-(-config.max_sessions // config.processes),
        command_timeout=config.command_timeout,
        data_timeout=config.data_timeout,
        tls_context=tls_context,
        require_tls=bool(config.tls and config.tls.require),
    )


class Listener:
    """Binds the socket and serves sessions; settings can be swapped on reload."""

    def __init__(self, intake: Intake, settings: ListenerSettings) -> None:
        self.handler = RelayHandler(intake)
        self.settings = settings
        self.registry = SessionRegistry()
        self._server: asyncio.Server | None = None

    def _new_session(self) -> GuardSMTP:
        return GuardSMTP(self.handler, self.settings, self.registry, asyncio.get_running_loop())

    async def start(
        self, host: str, port: int, sock: socket.socket | None = None
    ) -> tuple[str, int]:
        """Bind `host:port`, or serve on `sock`, a listening socket shared by several processes."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(self._new_session, sock=sock, backlog=512)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._server = await loop.create_server(
                self._new_session,
                host=host,
                port=port,
                family=family,
                reuse_address=True,
                backlog=512,
            )
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def stop_accepting(self) -> None:
        self.registry.draining = True
        if self._server is not None:
            self._server.close()
        self.registry.close_idle()

    async def drain(self, timeout: float) -> bool:
        """Wait for sessions mid-transaction to finish; True if all did in time."""
        if self.registry.sessions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.registry.all_closed.wait()
        for session in list(self.registry.sessions):
            session.close_with(replies.R421_SHUTTING_DOWN)
        return not self.registry.sessions
