"""Sample-export generators, one per contract."""
