"""The Fibonacci API as a `wasi:http/proxy` component, in plain Python.

`GET /<n>` answers the Fibonacci sequence seeded with 0 and 1, extended while its last element
is below n, as a JSON array. The responses are byte for byte those of the Rust guest
(`crates/fibonacci`), so that benchmarks compare languages, not two different APIs.

The file has two halves. The top is an ordinary web application: a view function per route that
returns a body and a status, and errors raised as exceptions, the way a Flask view would be
written. The bottom, `IncomingHandler`, is the only part that knows about `wasi:http`: it turns
the request into a method and a path, calls the application, and writes the response out.

Built by `scripts/build-lang-guests.sh python`, which runs (here)
`componentize-py -d ../../wit -w fibhost:guest/http-guest componentize app -o ../python-fib.wasm`;
componentize-py generates the `wit_world` package during that build.
"""

import json
import re
from dataclasses import dataclass, field

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Connect,
    Method_Delete,
    Method_Get,
    Method_Head,
    Method_Options,
    Method_Other,
    Method_Patch,
    Method_Post,
    Method_Put,
    Method_Trace,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

# The longest number (in digits, leading zeros included, sign excluded) that `GET /<n>` accepts.
MAX_DIGITS = 1024
ALLOWED_METHODS = "GET, HEAD"
CONTENT_TYPE = "application/json"

# An optional sign, then ASCII digits. Not `\d` and not `int()` alone: both also accept
# non-ASCII digits, and `int()` accepts spaces and underscores too.
INTEGER = re.compile(r"[+-]?[0-9]+")


# --- The application ------------------------------------------------------------------------


class HTTPError(Exception):
    """An error answered to the client as `{"error": message}` with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Response:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


def fibonacci(n: int) -> list[int]:
    """The sequence seeded with 0 and 1, extended while its last element is below `n`.

    Python integers have arbitrary precision, so this is exact for every accepted `n`.
    """
    sequence = [0, 1]
    while sequence[-1] < n:
        sequence.append(sequence[-2] + sequence[-1])
    return sequence


def parse_integer(text: str) -> int:
    """Parses `/<n>`'s segment, with the Rust guest's error messages."""
    if INTEGER.fullmatch(text) is None:
        raw = text.encode()
        digits_start = 1 if raw[:1] in (b"+", b"-") else 0
        if digits_start == len(raw):
            raise HTTPError(400, f"`{text}` is not an integer: expected digits after the sign")
        # Positions count bytes, 1-based, like the Rust guest's.
        position = next(i for i in range(digits_start, len(raw)) if not raw[i : i + 1].isdigit())
        byte = raw[position]
        shown = f"'{chr(byte)}'" if 0x21 <= byte <= 0x7E else f"byte 0x{byte:02x}"
        raise HTTPError(
            400,
            f"`{text}` is not an integer: unexpected {shown} at position {position + 1}; "
            "expected an optional sign followed by ASCII digits",
        )
    digits = len(text) - (text[0] in "+-")
    if digits > MAX_DIGITS:
        raise HTTPError(400, f"the number has {digits} digits; the limit is {MAX_DIGITS}")
    return int(text)


def fibonacci_view(n: str) -> str:
    """`GET /<n>`."""
    return json.dumps(fibonacci(parse_integer(n)))


def dispatch(method: str, target: str) -> Response:
    """Routes one request: `target` is the path with its optional query (which is ignored)."""
    try:
        if method not in ("GET", "HEAD"):
            raise HTTPError(405, f"method {method} is not allowed; use GET or HEAD")
        path = target.split("?", 1)[0]
        segment = path[1:]
        if not path.startswith("/") or not segment or "/" in segment:
            raise HTTPError(404, "not found; use GET /<n>, for example /9000")
        return Response(200, fibonacci_view(segment))
    except HTTPError as e:
        # `ensure_ascii=False` keeps non-ASCII characters as they are, as the Rust guest does.
        body = json.dumps({"error": e.message}, ensure_ascii=False)
        headers = {"allow": ALLOWED_METHODS} if e.status == 405 else {}
        return Response(e.status, body, headers)


# --- The wasi:http adapter ------------------------------------------------------------------

METHOD_NAMES = {
    Method_Get: "GET",
    Method_Head: "HEAD",
    Method_Post: "POST",
    Method_Put: "PUT",
    Method_Delete: "DELETE",
    Method_Connect: "CONNECT",
    Method_Options: "OPTIONS",
    Method_Trace: "TRACE",
    Method_Patch: "PATCH",
}

# `blocking-write-and-flush` takes at most 4096 bytes per call.
WRITE_CHUNK = 4096


class IncomingHandler(exports.IncomingHandler):
    """The component's export: componentize-py finds this class by its name."""

    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = request.method()
        name = method.value if isinstance(method, Method_Other) else METHOD_NAMES[type(method)]
        response = dispatch(name, request.path_with_query() or "")

        body = response.body.encode()
        headers = [
            ("content-type", CONTENT_TYPE.encode()),
            ("content-length", str(len(body)).encode()),
        ]
        headers += [(key, value.encode()) for key, value in response.headers.items()]
        outgoing = OutgoingResponse(Fields.from_list(headers))
        outgoing.set_status_code(response.status)

        if name == "HEAD":
            # The headers of GET, Content-Length included, and no body. Taking the body and
            # writing nothing would make the host fail the response for writing fewer bytes
            # than Content-Length announces.
            ResponseOutparam.set(response_out, Ok(outgoing))
            return

        outgoing_body = outgoing.body()
        ResponseOutparam.set(response_out, Ok(outgoing))
        # The stream is a child of the body: it must be dropped (the `with` block) before
        # the body is finished.
        with outgoing_body.write() as stream:
            for start in range(0, len(body), WRITE_CHUNK):
                stream.blocking_write_and_flush(body[start : start + WRITE_CHUNK])
        OutgoingBody.finish(outgoing_body, None)
