"""Polling FreshBooks for what webhooks missed, and emitting it through the same pipeline."""
