#!/usr/bin/env python3
"""smtpguard with stages of its per-message work switched off, for stages_bench.py.

Not a way to run a relay: with a stage off, accepted mail is not read, not
decided or not delivered. It answers one question for the benchmarks: how
fast would the relay accept mail if a stage cost nothing at all, anywhere (the
most that moving the stage off the event loop, to another core, could give).

    python bench/stage_switches.py no-delivery serve --config bench/smtpguard-bench.yaml

The first argument names the stages switched off, joined by "+", or "shipped";
the rest are `smtpguard`'s own arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

STAGES = {
    "no-reading": "no parse or detect (each message gets the first one's reading)",
    "no-delivery": "never delivered",
    "accept-only": "stored and answered 250, then nothing (no reading, verdict or delivery)",
}


def _replace(owner: type, name: str, replacement: Callable[..., Any]) -> None:
    getattr(owner, name)  # an AttributeError here: the relay changed, update this file
    setattr(owner, name, replacement)


def switch_off(stages: list[str]) -> None:
    from smtpguard.act.queue import DeliveryQueue, Job
    from smtpguard.parse.pool import ParsePool
    from smtpguard.relay import Relay

    for stage in stages:
        if stage not in STAGES:
            raise SystemExit(f"unknown stage {stage!r}; known: shipped, {', '.join(STAGES)}")
    if "no-reading" in stages:
        first: list[Any] = []
        read = ParsePool.parse

        async def parse_once(self: ParsePool[Any], raw: bytes) -> Any:
            if not first:
                first.append(await read(self, raw))
            return first[0]

        _replace(ParsePool, "parse", parse_once)
    if "no-delivery" in stages:

        def submit_nothing(self: DeliveryQueue, job: Job) -> None:
            return None

        _replace(DeliveryQueue, "submit", submit_nothing)
    if "accept-only" in stages:

        def scan_nothing(self: Relay, *args: Any, **kwargs: Any) -> None:
            return None

        _replace(Relay, "_scan_later", scan_nothing)


def one_process() -> None:
    """The switches replace methods in this process: the stages are measured on one
    event loop, as one relay process runs them, whatever `server.reading_process` says
    (with it, the work would go to child processes the switches never reach)."""
    import smtpguard.relay as relay

    load = relay.load_config

    def load_for_one_process(*args: Any, **kwargs: Any) -> Any:
        config = load(*args, **kwargs)
        server = config.server.model_copy(update={"reading_process": False})
        return config.model_copy(update={"server": server})

    relay.load_config = load_for_one_process


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    stages = [] if argv[0] == "shipped" else argv[0].split("+")
    switch_off(stages)
    one_process()
    from smtpguard.cli import main as smtpguard_main

    return smtpguard_main(argv[1:])


if __name__ == "__main__":  # parse workers (forkserver children) import this file too
    sys.exit(main(sys.argv[1:]))
