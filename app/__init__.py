"""saelab app (later issues)."""
