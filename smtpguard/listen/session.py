"""The SMTP conversation: aiosmtpd's protocol with the parts a relay must own.

aiosmtpd gives us the command loop, STARTTLS and timeouts. We replace what a
DLP relay cannot leave to defaults: who may connect, the null sender, enhanced
status codes on every reply, SIZE enforcement with 552 5.3.4, and a DATA
reader that refuses smuggling and reads large messages in slices.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from smtpguard.listen import replies
from smtpguard.listen.clients import ClientAllowlist
from smtpguard.listen.data import DataProblem, read_data

_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(\s|$)")
# Control characters a reply might echo from the client (aiosmtpd quotes unknown commands).
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NO_ENHANCED = ("220", "354")


@dataclass(frozen=True)
class ListenerSettings:
    hostname: str
    allowlist: ClientAllowlist
    max_message_size: int
    max_recipients: int
    max_sessions: int
    command_timeout: float
    data_timeout: float
    tls_context: ssl.SSLContext | None = None
    require_tls: bool = False


@dataclass
class SessionRegistry:
    """The live sessions of one listener: for the session limit and for draining."""

    sessions: set[GuardSMTP] = field(default_factory=set)
    draining: bool = False
    all_closed: asyncio.Event = field(default_factory=asyncio.Event)
    # Told of every reply line sent (for the metrics' reply counts); None: nobody counts.
    on_reply: Callable[[str], None] | None = None

    def add(self, session: GuardSMTP) -> None:
        self.sessions.add(session)
        self.all_closed.clear()

    def discard(self, session: GuardSMTP) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self.all_closed.set()

    def close_idle(self) -> None:
        for session in list(self.sessions):
            if not session.in_transaction:
                session.close_with(replies.R421_SHUTTING_DOWN)


class GuardSMTP(SMTP):
    def __init__(
        self,
        handler: Any,
        settings: ListenerSettings,
        registry: SessionRegistry,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(
            handler,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.hostname,
            ident="ESMTP smtpguard",
            tls_context=settings.tls_context,
            require_starttls=settings.require_tls and settings.tls_context is not None,
            timeout=settings.command_timeout,
            loop=loop,
        )
        self.settings = settings
        self.registry = registry
        self.in_transaction = False
        self.body_8bit = False
        self._refused = False

    # -- connection -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and self.transport is None:
            peer = transport.get_extra_info("peername")
            refusal = None
            if not self.settings.allowlist.allows(peer):
                client = peer[0] if isinstance(peer, tuple) and peer else "unknown"
                refusal = replies.R554_RELAY_DENIED.format(client=client)
            elif self.registry.draining:
                refusal = replies.R421_SHUTTING_DOWN
            elif len(self.registry.sessions) >= self.settings.max_sessions:
                refusal = replies.R421_TOO_MANY_SESSIONS
            if refusal is not None:
                self._refused = True
                self.event_handler.session_refused(peer, refusal)
                if self.registry.on_reply is not None:
                    self.registry.on_reply(refusal)
                _write_and_close(transport, refusal)
                return
            self.registry.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self.registry.discard(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        result: bool | None = super().eof_received()
        return result

    def _timeout_cb(self) -> None:
        """aiosmtpd just drops an idle client; a polite server says why first."""
        self.event_handler.session_timed_out(self.session.peer if self.session else None)
        self.close_with(replies.R421_COMMAND_TIMEOUT)

    def close_with(self, reply: str) -> None:
        if self.transport is not None:
            if self.registry.on_reply is not None:
                self.registry.on_reply(reply)
            _write_and_close(self.transport, reply)

    def current(self) -> tuple[Session, Envelope]:
        """The session and envelope, which aiosmtpd types as optional but sets on connect."""
        assert self.session is not None and self.envelope is not None
        return self.session, self.envelope

    def _reset_transaction(self) -> None:
        self._set_rset_state()  # type: ignore[no-untyped-call]
        self.in_transaction = False
        self.body_8bit = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parsing (for VRFY) uses the stdlib's, which can raise
        IndexError on a truncated address: that is a syntax error, not a 451."""
        try:
            address, rest = super()._getaddr(arg)
        except (IndexError, ValueError):
            return None, None
        return address, rest

    @property
    def tls_active(self) -> bool:
        return getattr(self, "_tls_protocol", None) is not None

    # -- replies ----------------------------------------------------------

    async def push(self, status: str) -> None:  # type: ignore[override]
        # One line of text: no CR, LF or NUL from the client, no undecodable bytes.
        status = _UNPRINTABLE.sub("?", status).encode("utf-8", "replace").decode("utf-8")
        if self.registry.on_reply is not None:
            self.registry.on_reply(status)
        await super().push(with_enhanced_code(status))

    async def _push_lines(self, lines: list[str]) -> None:
        """Multi-line replies that must not carry enhanced codes (EHLO)."""
        if lines and self.registry.on_reply is not None:
            self.registry.on_reply(lines[-1])
        for line in lines:
            self._writer.write(line.encode() + b"\r\n")
        await self._writer.drain()

    # -- commands ---------------------------------------------------------

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        self._reset_transaction()
        session, _ = self.current()
        session.extended_smtp = False
        session.host_name = hostname
        await self._push_lines([f"250 {self.hostname}"])

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._reset_transaction()
        session, _ = self.current()
        session.extended_smtp = True
        session.host_name = hostname
        extensions = [
            f"SIZE {self.settings.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
        ]
        if self.tls_context is not None and not self.tls_active:
            extensions.append("STARTTLS")
        lines = [f"250-{self.hostname}"]
        lines += [f"250-{ext}" for ext in extensions[:-1]]
        lines.append(f"250 {extensions[-1]}")
        await self._push_lines(lines)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: RSET")
            return
        self._reset_transaction()
        await self.push(replies.R250_OK)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.registry.draining:
            self.close_with(replies.R421_SHUTTING_DOWN)
            return
        session, envelope = self.current()
        if not session.host_name:
            await self.push(replies.R503_NEED_HELO)
            return
        if self.in_transaction:
            await self.push(replies.R503_NESTED_MAIL)
            return
        rest = self._strip_command_keyword("FROM:", arg) if arg else None
        if rest is None:
            await self.push(replies.R501_SYNTAX_MAIL)
            return
        parsed = _split_path(rest)
        if parsed is None:
            await self.push(replies.R501_SYNTAX_MAIL)
            return
        address, parameters = parsed
        if parameters and not session.extended_smtp:
            await self.push(replies.R501_SYNTAX_MAIL)
            return
        options = parameters.split()
        smtputf8 = False
        body_8bit = False
        for option in options:
            name, _, value = option.partition("=")
            name = name.upper()
            if name == "SIZE":
                if not (value.isascii() and value.isdigit()):
                    await self.push(replies.R501_SYNTAX_MAIL)
                    return
                if int(value) > self.settings.max_message_size:
                    await self.push(
                        replies.R552_TOO_BIG.format(limit=self.settings.max_message_size)
                    )
                    return
            elif name == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    await self.push(replies.R504_BAD_BODY)
                    return
                body_8bit = value.upper() == "8BITMIME"
            elif name == "SMTPUTF8" and not value:
                smtputf8 = True
            else:
                await self.push(replies.R555_UNKNOWN_PARAMETER.format(command="MAIL", name=name))
                return
        envelope.smtp_utf8 = smtputf8
        status = await self._call_handler_hook("MAIL", address, options)
        if status is MISSING:
            status = replies.R250_SENDER_OK
        if status.startswith("250"):
            envelope.mail_from = address
            envelope.mail_options = options
            self.body_8bit = body_8bit
            self.in_transaction = True
        await self.push(status)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        session, envelope = self.current()
        if not session.host_name:
            await self.push(replies.R503_NEED_HELO)
            return
        if not self.in_transaction:
            await self.push(replies.R503_NEED_MAIL)
            return
        rest = self._strip_command_keyword("TO:", arg) if arg else None
        parsed = _split_path(rest) if rest is not None else None
        if parsed is None or not parsed[0]:
            await self.push(replies.R501_SYNTAX_RCPT)
            return
        address, parameters = parsed
        if parameters:
            name = parameters.split()[0].partition("=")[0].upper()
            await self.push(replies.R555_UNKNOWN_PARAMETER.format(command="RCPT", name=name))
            return
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            await self.push(replies.R452_TOO_MANY_RECIPIENTS)
            return
        status = await self._call_handler_hook("RCPT", address, [])
        if status is MISSING:
            status = replies.R250_RECIPIENT_OK
        if status.startswith("250"):
            envelope.rcpt_tos.append(address)
        await self.push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        session, envelope = self.current()
        if not session.host_name:
            await self.push(replies.R503_NEED_HELO)
            return
        if not self.in_transaction:
            await self.push(replies.R503_NEED_MAIL)
            return
        if not envelope.rcpt_tos:
            await self.push(replies.R503_NEED_RCPT)
            return
        if arg:
            await self.push(replies.R501_SYNTAX_DATA)
            return
        await self.push(replies.R354_START)
        self._reset_timeout(self.settings.data_timeout + 5)
        try:
            async with asyncio.timeout(self.settings.data_timeout):
                received = await read_data(self._reader, self.settings.max_message_size)
        except TimeoutError:
            self.close_with(replies.R421_DATA_TIMEOUT)
            return
        self._reset_timeout()
        status: str
        if received.problem is DataProblem.TOO_BIG:
            status = replies.R552_TOO_BIG.format(limit=self.settings.max_message_size)
        elif received.problem is DataProblem.BARE_LINE_ENDING:
            status = replies.R550_BARE_LINE_ENDING
        elif received.problem is DataProblem.LINE_TOO_LONG:
            status = replies.R550_LINE_TOO_LONG
        else:
            envelope.content = received.content
            envelope.original_content = received.content
            hook_status = await self._call_handler_hook("DATA")
            status = replies.R250_OK if hook_status is MISSING else hook_status
        if received.problem is not None:
            self.event_handler.data_refused(self, received.problem, received.size)
        self._reset_transaction()
        await self.push(status)
        if self.registry.draining:
            self.close_with(replies.R421_SHUTTING_DOWN)


def _write_and_close(transport: asyncio.BaseTransport, reply: str) -> None:
    """Duck-typed: uvloop's transports do not derive from asyncio's classes."""
    if transport.is_closing():
        return
    write = getattr(transport, "write", None)
    if write is not None:
        write(reply.encode() + b"\r\n")
    transport.close()


def _split_path(text: str) -> tuple[str, str] | None:
    """`<addr> params` -> (addr, params); `<>` is the null sender."""
    text = text.strip()
    if not text.startswith("<"):
        return None
    end = _closing_bracket(text)
    if end is None:
        return None
    address = text[1:end]
    if address.startswith("@"):
        if ":" not in address:
            return None
        address = address.split(":", 1)[1]  # drop an RFC 5321 source route
        if not address:
            return None  # a route to nowhere is not the null sender
    return address, text[end + 1 :].strip()


def _closing_bracket(text: str) -> int | None:
    quoted = False
    escaped = False
    for index, char in enumerate(text[1:], start=1):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
    return None


def with_enhanced_code(status: str) -> str:
    """Give a single-line reply the enhanced code RFC 2034 asks for, if it lacks one."""
    code = status[:3]
    if code in _NO_ENHANCED or _HAS_ENHANCED.match(status) or status[3:4] == "-":
        return status
    enhanced = replies.ENHANCED_DEFAULTS.get(code)
    if enhanced is None:
        return status
    text = status[4:]
    if text.startswith("Error: "):
        text = text[len("Error: ") :]
    return f"{code} {enhanced} {text}".rstrip()
