"""Delivery to an upstream that wants STARTTLS, implicit TLS or AUTH: real TLS on loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from smtpguard.spool import MessageState
from tests.conftest import RelayRunner
from tests.sink import CaptureSink

MESSAGE = b"Subject: tls\r\nMessage-ID: <tls-1@northshire.gov.uk>\r\n\r\nbody\r\n"


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(authority: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return path


def _server_context(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


class _Accounts:
    def __init__(self, user: str, password: str) -> None:
        self.user = user.encode()
        self.password = password.encode()
        self.logins: list[bytes] = []

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            self.user,
            self.password,
        )
        if ok:
            self.logins.append(data.login)
        return AuthResult(success=ok)


@pytest.fixture
async def tls_sink(authority: trustme.CA) -> AsyncIterator[tuple[CaptureSink, _Accounts]]:
    accounts = _Accounts("smtpguard", "correct horse")
    capture = CaptureSink(
        tls_context=_server_context(authority),
        require_starttls=True,
        authenticator=accounts,
        auth_required=True,
    )
    await capture.start()
    yield capture, accounts
    await capture.stop()


async def _send(port: int) -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    _, reply = await client.sendmail("j@northshire.gov.uk", ["a@example.org"], MESSAGE)
    await client.quit()
    return reply


async def test_when_upstream_needs_starttls_and_auth_then_delivered(
    relays: RelayRunner,
    tls_sink: tuple[CaptureSink, _Accounts],
    ca_file: Path,
    tmp_path: Path,
) -> None:
    sink, accounts = tls_sink
    password = tmp_path / "upstream-password"
    password.write_text("correct horse\n")
    password.chmod(0o600)
    service = await relays.start(
        {
            "upstream": {
                "host": "127.0.0.1",
                "security": "starttls",
                "ca_file": str(ca_file),
                "username": "smtpguard",
                "password_file": str(password),
            }
        },
        upstream_port=sink.port,
    )
    assert service.address is not None
    await _send(service.address[1])
    [captured] = await sink.handler.wait_for(1)
    assert captured.content.endswith(MESSAGE)
    assert accounts.logins == [b"smtpguard"]


async def test_when_upstream_certificate_not_trusted_then_deferred_not_sent(
    relays: RelayRunner, tls_sink: tuple[CaptureSink, _Accounts], tmp_path: Path
) -> None:
    sink, _ = tls_sink
    password = tmp_path / "upstream-password"
    password.write_text("correct horse\n")
    service = await relays.start(
        {
            "upstream": {
                "host": "127.0.0.1",
                "security": "starttls",
                "username": "smtpguard",
                "password_file": str(password),
            }
        },
        upstream_port=sink.port,
    )
    assert service.address is not None
    reply = await _send(service.address[1])
    message_id = reply.rsplit(" ", 1)[1]
    await asyncio.sleep(0.5)
    assert sink.handler.messages == []
    record = await service.store.load(message_id)
    assert record is not None
    assert record.state in (MessageState.DEFERRED, MessageState.DELIVERING)


async def test_when_upstream_uses_implicit_tls_then_delivered(
    relays: RelayRunner, authority: trustme.CA, ca_file: Path
) -> None:
    sink = CaptureSink()
    loop = asyncio.get_running_loop()
    from aiosmtpd.smtp import SMTP

    server = await loop.create_server(
        lambda: SMTP(sink.handler, hostname="sink.test"),
        host="127.0.0.1",
        port=0,
        ssl=_server_context(authority),
    )
    port = server.sockets[0].getsockname()[1]
    try:
        service = await relays.start(
            {"upstream": {"security": "tls", "ca_file": str(ca_file)}}, upstream_port=port
        )
        assert service.address is not None
        await _send(service.address[1])
        [captured] = await sink.handler.wait_for(1)
        assert captured.content.endswith(MESSAGE)
    finally:
        server.close()


async def test_when_auth_password_wrong_then_deferred(
    relays: RelayRunner,
    tls_sink: tuple[CaptureSink, _Accounts],
    ca_file: Path,
    tmp_path: Path,
) -> None:
    sink, accounts = tls_sink
    password = tmp_path / "upstream-password"
    password.write_text("wrong\n")
    service = await relays.start(
        {
            "upstream": {
                "security": "starttls",
                "ca_file": str(ca_file),
                "username": "smtpguard",
                "password_file": str(password),
            }
        },
        upstream_port=sink.port,
    )
    assert service.address is not None
    reply = await _send(service.address[1])
    await asyncio.sleep(0.5)
    assert sink.handler.messages == []
    assert accounts.logins == []
    record = await service.store.load(reply.rsplit(" ", 1)[1])
    assert record is not None and record.state is not MessageState.DELIVERED
