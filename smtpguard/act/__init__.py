"""Act: carry out a verdict: deliver upstream with retries, bounce, notify."""
