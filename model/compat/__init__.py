"""Compatibility layers for other Online Normalization packages (our own API is unchanged)."""
