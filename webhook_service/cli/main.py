"""``main``: parse, load the settings, run the command, and turn what went wrong into one line and a status.

Exit statuses: 0 done; 1 the command failed (the line says why); 2 a usage error (the command's
usage, then the error) or a configuration error (the setting and what to do); 130 Ctrl-C.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from collections.abc import Sequence

from webhook_service.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_CONFIGURATION,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    UsageError,
)
from webhook_service.cli.parser import build_parser
from webhook_service.config import ConfigurationError, get_settings
from webhook_service.core.crypto import SecretKeyError
from webhook_service.core.logs import configure_logging
from webhook_service.freshbooks.errors import FreshBooksError


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.handler is None:  # `webhook-service` or a group (`tenants`) alone
        args.parser.print_help()
        return EXIT_USAGE
    try:
        if args.check is not None and (problem := args.check(args)):
            raise UsageError(problem)
        settings = get_settings()
        configure_logging(settings.log_level, settings.log_format)
        result = args.handler(settings, args)
        if inspect.iscoroutine(result):  # an async handler
            result = asyncio.run(result)
        return int(result or EXIT_OK)
    except UsageError as exc:
        args.parser.error(str(exc))  # the command's usage and the error on stderr; exits 2
    except ConfigurationError as exc:  # a setting the service cannot run with: before any work
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    except (CommandError, SecretKeyError, FreshBooksError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `| head` read what it wanted and left: stop quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush has nowhere to fail
        return EXIT_BROKEN_PIPE
    return EXIT_USAGE  # not reached: parser.error exits
