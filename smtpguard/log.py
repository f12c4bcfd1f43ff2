"""Logging: one structlog configuration for the whole process.

JSON lines when the output is not a terminal (journald, files), readable
columns when it is. Events carry ids, counts and domains; never a subject,
a body, or a matched value. aiosmtpd's own logger prints every command line
at INFO, addresses included, so it is held at WARNING.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from smtpguard.config import LoggingConfig

_CHATTY_LIBRARIES = ("mail.log", "aiosmtplib", "asyncio")


def configure_logging(config: LoggingConfig, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    level = getattr(logging, config.level.upper())
    as_json = config.format == "json" or (config.format == "auto" and not stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write() per line (PrintLogger writes the newline separately): several
        # relay processes share stderr, and their lines must not run together.
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(
        stream=stream, level=logging.WARNING, format="%(name)s %(levelname)s %(message)s"
    )
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
