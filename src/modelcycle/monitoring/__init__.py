"""Monitoring: what the model server captured, kept for drift checks against a reference."""
