"""Receiving FreshBooks webhooks: callback registration, the verification handshake, signature
checks and the durable inbox."""
