"""HTTP pieces every service shares: error bodies, health, body limits and serving.

Bad input is answered with a 4xx whose body names each field and the reason: a 422 for
invalid fields, a 400 naming the body and where it breaks for a body that is not JSON;
anything unexpected is a bare 500 with no traceback in the body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logging import get_logger

log = get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""Returns None when ready, or the reason it is not."""


def field_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    """pydantic's errors as ``{"field": "author.handle", "reason": "..."}`` items."""
    out = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        reason = str(error.get("msg", "invalid"))
        if error.get("type") == "json_invalid":  # located by a character, not a field
            why = error.get("ctx", {}).get("error", "")
            out.append({"field": "body", "reason": f"{reason}: {why} at character {loc[-1]}"})
            continue
        if loc and loc[0] in ("body", "query", "path", "header"):  # where, not which field
            loc = loc[1:]
        out.append({"field": ".".join(loc) or "body", "reason": reason})
    return out


def field_problem(field: str, reason: str, code: int = 422) -> HTTPException:
    """An error answer shaped as validation errors are: the field, and the reason."""
    return HTTPException(code, [{"field": field, "reason": reason}])


def not_found(field: str, what: str) -> HTTPException:
    """A 404 naming the path parameter that matched nothing."""
    return field_problem(field, f"no such {what}", status.HTTP_404_NOT_FOUND)


def not_json(error: ValueError | RecursionError) -> dict[str, str]:
    """A body that is not JSON as a field problem: the decoder's reason, and where."""
    if isinstance(error, json.JSONDecodeError):
        where = f"line {error.lineno}, column {error.colno} (character {error.pos})"
        return {"field": "body", "reason": f"not valid JSON: {error.msg} at {where}"}
    if isinstance(error, UnicodeDecodeError):
        line = error.object.count(b"\n", 0, error.start) + 1
        column = error.start - error.object.rfind(b"\n", 0, error.start)
        where = f"line {line}, column {column} (byte {error.start})"
        not_text = f"not valid {error.encoding.upper()} ({error.reason})"
        return {"field": "body", "reason": f"not valid JSON: {not_text} at {where}"}
    if isinstance(error, RecursionError):
        return {"field": "body", "reason": "not valid JSON: nested too deeply to read"}
    return {"field": "body", "reason": f"not valid JSON: {error}"}


def parse_json(body: bytes) -> Any:
    """The body's JSON; a 400 naming the body, where it breaks and why, if it is not JSON."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, [not_json(error)]) from error


def _json_decode_error(exc: RequestValidationError) -> json.JSONDecodeError | None:
    """The decoder's error behind FastAPI's report of a body that is not JSON, if that is
    what failed (FastAPI keeps its reason, position and the text)."""
    for error in exc.errors():
        if error.get("type") == "json_invalid" and isinstance(exc.body, str):
            reason = str(error.get("ctx", {}).get("error", "invalid"))
            return json.JSONDecodeError(reason, exc.body, int(error["loc"][-1]))
    return None


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    broken = _json_decode_error(exc)
    if broken is not None:
        return JSONResponse(
            status_code=status.HTTP_400_BAD_REQUEST, content={"detail": [not_json(broken)]}
        )
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        content={"detail": field_errors(exc.errors())},
    )


async def _http_error(request: Request, exc: Exception) -> Any:
    """FastAPI answers a JSON body it cannot decode at all (not UTF-8, nested too deeply)
    with a bare 400; say what is wrong with it, as for any other body that is not JSON."""
    assert isinstance(exc, StarletteHTTPException)
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, (UnicodeDecodeError, RecursionError)):
        return JSONResponse(status_code=400, content={"detail": [not_json(cause)]})
    return await http_exception_handler(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    route = getattr(request.scope.get("route"), "path", "?")  # a template: no ids or handles
    log.error("unhandled error", method=request.method, route=route, error=repr(exc))
    return JSONResponse(status_code=500, content={"detail": "internal error"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    document_field_errors(app)


FIELD_PROBLEM_SCHEMA = {
    "title": "FieldProblem",
    "type": "object",
    "required": ["field", "reason"],
    "properties": {
        "field": {"type": "string", "description": "e.g. author.handle, or body"},
        "reason": {"type": "string"},
    },
}


def document_field_errors(app: FastAPI) -> None:
    """Make the OpenAPI schema say what a 422 carries here: ``{"detail": [{"field",
    "reason"}]}``, not FastAPI's default ``loc``/``msg``/``type`` items."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        schemas = schema.get("components", {}).get("schemas", {})
        if "ValidationError" in schemas:
            schemas["ValidationError"] = FIELD_PROBLEM_SCHEMA
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


async def app_service(request: Request) -> Any:
    """Dependency: the service object ``create_app`` put on the app's state.

    Each api module names its type: ``Annotated[IngestService, Depends(app_service)]``.
    Dependencies are ``async`` even when they do not wait: FastAPI runs a plain function
    in a worker thread, a thread hand-off per request for a look-up.
    """
    return request.app.state.service


def public(doc: dict[str, Any], hide: Sequence[str] = ()) -> dict[str, Any]:
    """A stored document as the API shows it: ``_id`` as ``id``, hidden fields left out."""
    return {"id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id" and k not in hide}}


def add_health_routes(
    app: FastAPI, checks: Sequence[ReadinessCheck], liveness: Sequence[ReadinessCheck] = ()
) -> None:
    """``/readyz``: 503 with the reasons while a check fails. ``/healthz``: 503 when the
    process is alive but broken for good, which a restart mends (``liveness``)."""

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        reasons = [reason for reason in await asyncio.gather(*(c() for c in liveness)) if reason]
        if reasons:
            return JSONResponse(status_code=503, content={"status": "broken", "reasons": reasons})
        return JSONResponse(content={"status": "alive"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        reasons = [reason for reason in await asyncio.gather(*(c() for c in checks)) if reason]
        if reasons:
            return JSONResponse(
                status_code=503, content={"status": "not ready", "reasons": reasons}
            )
        return JSONResponse(content={"status": "ready"})


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is a 413 naming the body, never
    read into memory. The ``streamed`` routes, as (method, exact path), read their own
    bodies under their own limits (bulk imports). Exact: a path that merely ends like
    one (``/v1/customers/x:import``) would let any caller past the limit."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, streamed: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = frozenset(streamed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.streamed:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self.too_large(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:  # a body without a declared length: read up to the limit, no further
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self.too_large(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = f"larger than {self.max_bytes} bytes"
        response = JSONResponse(
            status_code=413, content={"detail": [{"field": "body", "reason": reason}]}
        )
        await response(scope, receive, send)


# How long an idle keep-alive connection stays open. Longer than the idle limit of the
# clients and load balancers in front (httpx 5 s, cloud load balancers 60 s): the client
# closes first, and never sends a request on a connection the server is closing, which
# it would see as a dropped connection (uvicorn's own default is the same 5 s as httpx's).
KEEP_ALIVE_S = 75


class Server:
    """One uvicorn server on the running loop; port 0 picks a free port."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            lifespan="on",
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        self.server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                raise RuntimeError("server failed to start (see the log above)")
            await asyncio.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task
