"""Message builders for the breach scenarios B1-B8 (tests/test_scenarios.py)."""
