"""Parse: raw message bytes in, a `Document` out.

`parse_message` is the whole stage as a pure function (document.py); the
relay runs it in worker processes through `ParsePool` (pool.py) so that a
hostile attachment costs a worker, not the relay.
"""

from smtpguard.parse.document import parse_message
from smtpguard.parse.model import Document, Flag, Limits, Part
from smtpguard.parse.pool import ParsePool

__all__ = ["Document", "Flag", "Limits", "ParsePool", "Part", "parse_message"]
