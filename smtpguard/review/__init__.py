"""Review: the quarantine and the reviewer's commands (built with the review work)."""
