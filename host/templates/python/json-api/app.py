"""{{name}}: a JSON API as a wasi:http guest for fibhost.

- `GET /hello?name=Ada` -> `{"message":"Hello, Ada!"}` (name percent-decoded, default "world")
- `POST /echo` with a JSON body -> `{"received":<the body as sent>}`
- HEAD of `/hello` -> GET's headers; other methods -> 405 with `Allow`; other paths -> 404;
  a bad query or body -> 400. Every error is `{"error":"..."}`.

componentize-py finds the class `IncomingHandler` in this module; `wit_world` is the package
it generates from `wit/` while it builds (see build.sh).
"""

import json
import re
from urllib.parse import unquote_to_bytes

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    Method_Head,
    Method_Post,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

# A `%` not followed by two hex digits.
BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class HTTPError(Exception):
    """Answered as `{"error": message}` with this status."""

    def __init__(self, status: int, message: str, allow: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.allow = status, message, allow


def to_json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def hello(query: str) -> bytes:
    """`GET /hello?name=...`"""
    name = ""
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == "name":
            try:
                if BAD_ESCAPE.search(value):
                    raise ValueError(value)
                name = unquote_to_bytes(value.replace("+", " ")).decode("utf-8")
            except ValueError:  # UnicodeDecodeError included
                raise HTTPError(400, "`name` is not valid percent-encoded UTF-8")
            break
    return to_json({"message": f"Hello, {name or 'world'}!"})


def reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity


def echo(body: bytes) -> bytes:
    """`POST /echo`: the body, checked to be JSON, sent back as it came."""
    try:
        json.loads(body.decode("utf-8"), parse_constant=reject_constant)
    except (ValueError, RecursionError):
        raise HTTPError(400, "the body is not valid JSON")
    return b'{"received":' + body.strip(b" \t\r\n") + b"}"


def read_body(request: IncomingRequest) -> bytes:
    """The whole request body, read in chunks to its end (fibhost caps its size)."""
    chunks = []
    # The stream must be dropped before its body: `with` drops them in reverse order.
    with request.consume() as body, body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(64 * 1024))
            except Err as e:
                if isinstance(e.value, StreamError_Closed):
                    return b"".join(chunks)
                raise HTTPError(400, "the request body could not be read")


def route(request: IncomingRequest, path: str, query: str) -> bytes:
    method = request.method()
    if path == "/hello":
        if not isinstance(method, (Method_Get, Method_Head)):
            raise HTTPError(405, "method not allowed; allowed: GET, HEAD", "GET, HEAD")
        return hello(query)
    if path == "/echo":
        if not isinstance(method, Method_Post):
            raise HTTPError(405, "method not allowed; allowed: POST", "POST")
        return echo(read_body(request))
    raise HTTPError(404, "not found; try GET /hello?name=you or POST /echo")


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path, _, query = (request.path_with_query() or "").partition("?")
        head = isinstance(request.method(), Method_Head)
        status, headers = 200, []
        try:
            body = route(request, path, query)
        except HTTPError as e:
            status, body = e.status, to_json({"error": e.message})
            if e.allow:
                headers.append(("allow", e.allow.encode()))
        headers += [("content-type", b"application/json"), ("content-length", str(len(body)).encode())]
        response = OutgoingResponse(Fields.from_list(headers))
        response.set_status_code(status)
        if head:
            # Taking the body and writing nothing would contradict the content-length.
            ResponseOutparam.set(response_out, Ok(response))
            return
        outgoing = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        # The stream must be dropped (the end of `with`) before the body is finished.
        with outgoing.write() as stream:
            try:
                for start in range(0, len(body), 4096):  # at most 4096 bytes per call
                    stream.blocking_write_and_flush(body[start : start + 4096])
            except Err:
                pass  # the client has gone away: nobody is left to tell
        OutgoingBody.finish(outgoing, None)
