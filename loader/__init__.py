"""Partner data onboarding: verify, land, validate and publish partner CSV exports."""

__version__ = "0.1.0"
