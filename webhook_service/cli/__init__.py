"""The `webhook-service` command line: thin over the same functions as the admin API."""

from webhook_service.cli.main import main

__all__ = ["main"]
