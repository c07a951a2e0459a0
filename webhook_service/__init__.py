"""FreshBooks webhooks, verified, normalized and delivered to your own services."""

__version__ = "0.1.0"
