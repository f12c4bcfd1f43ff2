"""Every reply the listener sends, named, with its enhanced status code (RFC 3463).

No reply ever carries exception text or a value from inside the message.
"""

R220_GREETING = "220 {hostname} ESMTP smtpguard"
R221_BYE = "221 2.0.0 Bye"
R250_OK = "250 2.0.0 OK"
R250_SENDER_OK = "250 2.1.0 Sender OK"
R250_RECIPIENT_OK = "250 2.1.5 Recipient OK"
R250_QUEUED = "250 2.0.0 Ok: queued as {message_id}"
R354_START = "354 End data with <CR><LF>.<CR><LF>"

R421_TOO_MANY_SESSIONS = "421 4.7.0 Too many connections, try again later"
R421_COMMAND_TIMEOUT = "421 4.4.2 Timeout waiting for a command, closing connection"
R421_DATA_TIMEOUT = "421 4.4.2 Timeout while receiving message data, closing connection"
R421_SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
R451_TRY_AGAIN = "451 4.3.0 Temporary failure, please try again later"
R452_STORAGE = "452 4.3.1 Insufficient system storage, try again later"
R452_QUEUE_FULL = "452 4.3.1 Queue is full, try again later"
R452_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"

R500_LINE_TOO_LONG = "500 5.5.2 Command line too long"
R501_SYNTAX_MAIL = "501 5.5.4 Syntax: MAIL FROM:<address> [SP <parameters>]"
R501_SYNTAX_RCPT = "501 5.5.4 Syntax: RCPT TO:<address> [SP <parameters>]"
R501_SYNTAX_DATA = "501 5.5.4 Syntax: DATA"
R501_BAD_SENDER = "501 5.1.7 Bad sender address syntax: {reason}"
R503_NEED_HELO = "503 5.5.1 Send EHLO or HELO first"
R503_NEED_MAIL = "503 5.5.1 Need MAIL command first"
R503_NEED_RCPT = "503 5.5.1 Need RCPT command first"
R503_NESTED_MAIL = "503 5.5.1 Sender already given"
R503_TLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"
R504_BAD_BODY = "501 5.5.4 BODY must be 7BIT or 8BITMIME"
R552_TOO_BIG = "552 5.3.4 Message size exceeds the fixed limit of {limit} bytes"
R553_BAD_RECIPIENT = "553 5.1.3 Bad recipient address syntax: {reason}"
R553_UTF8_NEEDS_SMTPUTF8 = "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter"
R554_RELAY_DENIED = "554 5.7.1 Relaying denied: client {client} is not allowed to use this relay"
R550_POLICY = "550 5.7.1 Message refused by policy: {reason}"
R550_BARE_LINE_ENDING = (
    "550 5.6.0 Message refused: bare CR or LF in message data is not allowed "
    "(every line must end with CRLF)"
)
R550_LINE_TOO_LONG = "550 5.6.0 Message refused: a line is longer than 998 characters"
R555_UNKNOWN_PARAMETER = "555 5.5.4 {command} parameter not recognised: {name}"

# Enhanced codes for replies aiosmtpd writes itself (HELP, NOOP, VRFY, errors).
ENHANCED_DEFAULTS = {
    "221": "2.0.0",
    "250": "2.0.0",
    "252": "2.0.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "550": "5.0.0",
    "554": "5.7.0",
    "555": "5.5.4",
}
