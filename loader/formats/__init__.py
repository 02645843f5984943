"""Streaming readers of partner files and header matching."""
