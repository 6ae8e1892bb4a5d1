"""Deterministic synthetic torso CT phantoms (placeholder until the sample-data issue lands)."""
