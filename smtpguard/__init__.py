"""smtpguard: an outbound data-loss-prevention SMTP relay for UK councils."""

__version__ = "0.1.0"
