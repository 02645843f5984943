"""Intake: load keys, manifest verification and partner settings."""
