"""Intake kinds: how a load's files arrive (uploads from the dashboard; SFTP and local folders arrive with issue 13)."""
