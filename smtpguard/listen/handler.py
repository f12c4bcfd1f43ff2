"""The aiosmtpd handler: an envelope in, a stored message and a reply out.

It stays thin. Address syntax, relay permission and back-pressure are checked
here because they decide a reply; storing, scanning and delivering belong to
the relay behind `Intake`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from smtpguard.envelope import Envelope
from smtpguard.listen import replies
from smtpguard.listen.addresses import address_problem
from smtpguard.listen.data import DataProblem

log = structlog.get_logger("smtpguard.listen")


@dataclass(frozen=True)
class Receipt:
    """What the relay did with a message: queued under an id, or refused by policy."""

    message_id: str | None
    refusal: str | None = None


class Intake(Protocol):
    async def receive(self, envelope: Envelope, content: bytes, tls: bool) -> Receipt: ...

    def pressure(self) -> str | None:
        """A 45x reply while the relay cannot safely take more mail, else None."""

    async def pace(self) -> None:
        """Returns when a new message may start (at once, unless reading lags behind)."""


def _peer_host(peer: object) -> str:
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        return peer[0]
    return "unknown"


class RelayHandler:
    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        busy = self.intake.pressure()
        if busy is not None:
            log.warning("session.deferred", client=_peer_host(session.peer), reason=busy)
            return busy
        await self.intake.pace()
        if address:
            problem = address_problem(address, envelope.smtp_utf8)
            if problem is not None:
                return replies.R501_BAD_SENDER.format(reason=problem)
        return replies.R250_SENDER_OK

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if not server.settings.allowlist.allows(session.peer):
            return replies.R554_RELAY_DENIED.format(client=_peer_host(session.peer))
        problem = address_problem(address, envelope.smtp_utf8)
        if problem is not None:
            return replies.R553_BAD_RECIPIENT.format(reason=problem)
        return replies.R250_RECIPIENT_OK

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = Envelope(
            sender=envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos),
            client_address=_peer_host(session.peer),
            client_name=session.host_name or "",
            received_at=time.time(),
            smtputf8=bool(envelope.smtp_utf8),
            body_8bit=server.body_8bit,
            tls=server.tls_active,
            mail_options=tuple(envelope.mail_options),
        )
        receipt = await self.intake.receive(message, envelope.content, server.tls_active)
        if receipt.refusal is not None:
            return receipt.refusal
        return replies.R250_QUEUED.format(message_id=receipt.message_id)

    async def handle_exception(self, error: BaseException) -> str:
        # The class name only: exception text can carry message content.
        log.error("session.error", error=type(error).__name__, exc_info=False)
        return replies.R451_TRY_AGAIN

    def session_refused(self, peer: object, reply: str) -> None:
        log.warning("session.refused", client=_peer_host(peer), reply=reply[:3])

    def session_timed_out(self, peer: object) -> None:
        log.info("session.timeout", client=_peer_host(peer))

    def data_refused(self, server: Any, problem: DataProblem, size: int) -> None:
        log.warning(
            "message.refused",
            client=_peer_host(server.session.peer),
            reason=problem.value,
            size=size,
        )
