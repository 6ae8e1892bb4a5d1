"""Sliding-window inference engine (placeholder until the inference issue lands)."""
