"""Internal: hooks."""
