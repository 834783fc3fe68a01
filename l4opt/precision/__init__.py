"""Per-layer sensitivity and the mixed-precision search within an accuracy budget."""
