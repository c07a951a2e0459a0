"""Forwarding normalized events to subscribers: signing, retries, dead letters, egress safety."""
