"""structlog set-up shared by every service: JSON in production, readable on a terminal.

Handlers bind ``event_id``, ``interaction_id`` and ``customer_id`` with
``bind_contextvars`` so each log line carries them without passing them around.
"""

from __future__ import annotations

import contextlib
import logging
import sys

import structlog

from shared.settings import LogSettings


def configure_logging(settings: LogSettings) -> None:
    level = logging.getLevelNamesMapping().get(settings.level.upper(), logging.INFO)
    json_output = (
        settings.json_output if settings.json_output is not None else not sys.stderr.isatty()
    )
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Library loggers (aiokafka, faust, uvicorn) speak through the standard module.
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr, force=True)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


def handling(
    event_id: str,
    interaction_id: str,
    customer_id: str | None = None,
    trace_id: str | None = None,
) -> contextlib.AbstractContextManager[None]:
    """Bind the ids of the event being handled to every log line inside the block."""
    ids = {"event_id": event_id, "interaction_id": interaction_id}
    if customer_id is not None:
        ids["customer_id"] = customer_id
    if trace_id is not None:
        ids["trace_id"] = trace_id
    return structlog.contextvars.bound_contextvars(**ids)
