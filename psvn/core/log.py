"""structlog JSON logs. Never log payloads, keys or certificates: ids and metadata only.

An exception logged with ``log.exception`` keeps its traceback (``exception`` field, plain text,
no local variables: locals could hold payloads or keys), so a 500 can be diagnosed from the log
line that carries its request id.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure(*, json: bool = True, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Log to ``stream`` (default: stderr) as JSON lines, or for people on a terminal."""
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        # format_exc_info turns exc_info into the traceback text; without it the JSON renderer
        # would print ``"exc_info": true`` and the traceback would be lost
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
