"""saelab autointerp (later issues)."""
