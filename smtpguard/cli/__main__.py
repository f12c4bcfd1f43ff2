"""`python -m smtpguard.cli`: the same as the `smtpguard` command."""

import sys

from smtpguard.cli import main

sys.exit(main())
