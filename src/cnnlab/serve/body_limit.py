"""Refuse request bodies over a size limit before reading them: 413, as JSON.

A declared `Content-Length` over the limit is answered at once, without reading a byte of the
body; a body without one (chunked) is counted while it streams in and refused as soon as the
count passes the limit, so a client can never make the server hold more than the limit.
Plain ASGI, so it works under any FastAPI or Starlette version:

    >>> app = BodyLimit(app, max_bytes=5 * 1024 * 1024)
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes the limit.

    An HTTPException, so that a framework reading the body for the endpoint passes it on as it
    is (rendered as 413 by the app's handler) instead of turning it into a parsing error.
    """

    def __init__(self, message: str):
        super().__init__(status_code=413, detail=message)


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def send_json_error(send, status: int, message: str) -> None:
    body = error_body(message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def declared_length(scope) -> int | None | str:
    """The Content-Length header as an int, None when absent, or the raw text when invalid."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else text
    return None


class BodyLimit:
    """ASGI middleware: HTTP request bodies of at most `max_bytes`."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def too_large_message(self) -> str:
        return f"the request body is over the limit of {self.max_bytes:,} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = declared_length(scope)
        if isinstance(length, str):
            await send_json_error(send, 400, f"invalid Content-Length header {length!r}")
            return
        if length is not None and length > self.max_bytes:
            await send_json_error(send, 413, self.too_large_message())
            return

        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.too_large_message())
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await send_json_error(send, 413, self.too_large_message())
