"""Internal: lightning."""
