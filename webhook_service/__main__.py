"""Allow ``python -m webhook_service``."""

from webhook_service.cli import main

raise SystemExit(main())
