"""Runs: the registry and its status history, one load end to end, reports and progress."""
