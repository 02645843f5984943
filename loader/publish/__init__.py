"""The one-transaction publish into production, and identical reruns."""
