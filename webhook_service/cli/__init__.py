"""The `webhook-service` command line: thin over the same functions as the admin API.

One module per command group (``service``, ``tenants``, ``callbacks``, ``events``, ``event_types``,
``subscriptions``, ``deliveries``, ``backfill``), each a table of commands (``spec``) that ``parser``
assembles; all printing is in ``output``; ``main`` runs a command and maps errors to exit statuses.
"""

from webhook_service.cli.main import main

__all__ = ["main"]
