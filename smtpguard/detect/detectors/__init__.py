"""Detectors: one module each, a `DETECTOR` or a `build(...)` returning one."""
