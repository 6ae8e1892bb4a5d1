"""Fine-tuning engine (placeholder until the fine-tuning issue lands)."""
