"""Internal: clip."""
