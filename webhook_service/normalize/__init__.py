"""FreshBooks events to normalized, documented events (Standard Webhooks shape)."""
