"""saelab circuits (later issues)."""
