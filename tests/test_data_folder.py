"""One relay per data folder, and a restarted relay takes back its own work at once.

A relay's recovery releases the claims it finds as its own, so a second relay
started on a folder already served must refuse to start (it would release
the first one's claims and deliver the same mail twice). With that
guaranteed, the leases a relay takes in a shared PostgreSQL store are named
after its host and folder: after a SIGKILL the relay started in its place
delivers what the dead one was delivering at once, instead of after the
600 s lease.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests import pg
from tests.conftest import write_config
from tests.processes import (
    RelayLauncher,
    ReservedSink,
    make_message,
    message_id,
    run_smtpguard,
    send_message,
    wait_for_ids,
    wait_until,
)

# The throwaway PostgreSQL server's fixtures, for this module.
pg_cluster = pg.pg_cluster
pg_dsn = pg.pg_dsn


async def test_a_second_relay_on_a_served_data_folder_refuses_to_start(
    tmp_path: Path, launcher: RelayLauncher, upstream: ReservedSink
) -> None:
    config = write_config(tmp_path)
    data = tmp_path / "data"
    first = await launcher.start(config, data, upstream.port)

    second = await run_smtpguard(
        "serve",
        "--config",
        str(config),
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data),
        cwd=tmp_path,
    )
    assert second.returncode == 2
    assert f"{data} is in use by another smtpguard relay (pid {first.pid})" in second.stderr

    # The first relay is untouched: it still takes mail and delivers it.
    await upstream.open()
    content = make_message("still serving")
    reply = await asyncio.to_thread(send_message, first.port, content)
    assert reply.code == 250
    await wait_for_ids(upstream, {message_id(content)}, timeout=15)
    assert first.returncode is None


class _SilentUpstream:
    """Takes the message and never answers the end of data: the relay's attempt hangs,
    its message DELIVERING under a lease, until the relay is killed."""

    def __init__(self) -> None:
        self.messages_read = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 silent.test ESMTP\r\n")
        try:
            while line := await reader.readline():
                command = line[:4].upper()
                if command == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    await reader.readuntil(b"\r\n.\r\n")
                    self.messages_read += 1
                    await asyncio.sleep(3600)
                writer.write(b"250 silent.test\r\n" if command == b"EHLO" else b"250 ok\r\n")
                await writer.drain()
        finally:
            writer.close()


async def test_a_relay_restarted_after_sigkill_delivers_its_own_leased_mail_at_once(
    tmp_path: Path, launcher: RelayLauncher, upstream: ReservedSink, pg_dsn: str
) -> None:
    config = write_config(
        tmp_path,
        {
            "store": {"backend": "postgresql", "dsn": pg_dsn, "data_dir": "data"},
            "upstream": {"timeout": "120s"},
        },
    )
    data = tmp_path / "data"
    silent = _SilentUpstream()
    server = await asyncio.start_server(silent.serve, "127.0.0.1", 0)
    try:
        relay = await launcher.start(config, data, server.sockets[0].getsockname()[1])
        content = make_message("leased when the relay died")
        reply = await asyncio.to_thread(send_message, relay.port, content)
        assert reply.code == 250
        await wait_until(lambda: silent.messages_read == 1, timeout=15, what="the stuck attempt")
        relay.send_signal(signal.SIGKILL)
        assert await relay.wait_exit(timeout=10) == -signal.SIGKILL
    finally:
        server.close()

    await upstream.open()
    await launcher.start(config, data, upstream.port)
    # The lease the dead process took runs 600 s; its successor need not wait for it.
    await wait_for_ids(upstream, {message_id(content)}, timeout=20)
