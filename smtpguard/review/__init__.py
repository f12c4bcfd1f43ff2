"""Review: held mail, the reviewers who release or refuse it, and the audit log.

`record` is what a reviewer is shown of a held message; `reviewers` who they
are; `decisions` the rules of release; `quarantine` the operations the
command line runs over the store; `clock` the expiry, reminders and digests
the relay runs; `audit` checks the hash-chained log.
"""
