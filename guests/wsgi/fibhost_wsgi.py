"""The WSGI bridge: serves any PEP 3333 application as a `wasi:http/incoming-handler` component.

`scripts/build-wsgi-guest.sh MODULE:CALLABLE --app-dir DIR -o OUT.wasm` bundles this module with
the application and a generated entry module that does

    import fibhost_wsgi
    fibhost_wsgi.load("MODULE:CALLABLE")
    from fibhost_wsgi import IncomingHandler

componentize-py runs that module at build time and snapshots the interpreter afterwards, so the
application and everything it imports at top level (Flask, Werkzeug, ...) are already imported
when an instance starts: a request pays only for the request.

One instance serves one request at a time and many requests in its life (fibhost reuses it), so
the environ says multithread False, multiprocess True, run_once False.

Resource hygiene. Every `wasi:http` resource this module obtains is dropped explicitly, in the
order the WASI contract requires (a child before its parent: the input stream before its
incoming body, the body's trailers future, the header fields before the request; the output
stream before the outgoing body is finished). Left to Python's garbage collector, a resource is
dropped whenever a collection happens to run, possibly after its parent, and the host traps the
instance ("resource has children"): a bridge that leaves them to the collector dies after a few
dozen requests.
"""

import encodings.idna  # noqa: F401  (Werkzeug encodes hosts with it lazily; import it at build time)
import gc
import importlib
import sys
import traceback
from urllib.parse import unquote_to_bytes

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    ErrorCode_InternalError,
    Fields,
    IncomingBody,
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
    Scheme_Http,
    Scheme_Https,
)

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
IO_CHUNK = 4096
# What one `blocking-read` of the request body asks for (it returns what the host has, up to this).
READ_CHUNK = 65536

# Hop-by-hop headers: PEP 3333 forbids an application to send them, and the host refuses them in
# a response's fields (wasi:http's `forbidden`), so they are left out rather than fail the
# response. The server frames the body itself.
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
        "host",
    )
)

_application = None


def load(target):
    """Imports `MODULE:CALLABLE` (at build time, from the entry module) as the application."""
    global _application
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected MODULE:CALLABLE, got {target!r}")
    obj = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    _application = obj
    # Everything imported so far lives as long as the instance: move it out of the cyclic
    # garbage collector's sight, so that its collections scan only what requests allocate.
    gc.collect()
    gc.freeze()


class FileWrapper:
    """`wsgi.file_wrapper`: iterates a file-like object in blocks (PEP 3333's optional
    extension). There is no `sendfile` in a component, so it is only a convenience: the blocks
    are written through the response body like any other iterable."""

    def __init__(self, filelike, block_size=8192):
        self.filelike = filelike
        self.block_size = block_size
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        read = self.filelike.read
        while True:
            block = read(self.block_size)
            if not block:
                return
            yield block


class Input:
    """`wsgi.input`: the request body, read from the host on demand.

    The body is taken from the request (`consume`) only when the application first reads, so a
    request whose body is never read costs no host calls for it. Reads stop at CONTENT_LENGTH
    when there is one (PEP 3333) and at the end of the stream otherwise (`wsgi.input_terminated`).
    fibhost enforces its body limit upstream: a longer body never reaches the guest.
    """

    __slots__ = ("_request", "_body", "_stream", "_buffer", "_remaining", "_eof", "_closed")

    def __init__(self, request, content_length):
        self._request = request
        self._body = None
        self._stream = None
        self._buffer = b""
        self._remaining = content_length  # None: read to the end of the stream
        self._eof = content_length == 0
        self._closed = False

    def _next(self, wanted):
        """The next chunk of the body (at most `wanted` bytes if >= 0); b"" at its end."""
        if self._closed:
            raise ValueError("wsgi.input read after the request finished")
        if self._eof:
            return b""
        if self._stream is None:
            self._body = self._request.consume()
            self._stream = self._body.stream()
        size = READ_CHUNK if wanted < 0 else max(1, min(wanted, READ_CHUNK))
        if self._remaining is not None:
            size = min(size, self._remaining)
        try:
            chunk = self._stream.blocking_read(size)
        except Err as e:
            if isinstance(e.value, StreamError_Closed):
                self._eof = True
                return b""
            raise OSError(f"reading the request body failed: {e.value}") from None
        if self._remaining is not None:
            self._remaining -= len(chunk)
            if self._remaining <= 0:
                self._eof = True
        return chunk

    def _fill(self, wanted):
        """Appends the next chunk to the buffer; False at the end of the body."""
        chunk = self._next(wanted)
        self._buffer += chunk
        return bool(chunk)

    def read(self, size=-1):
        # Chunks are collected and joined once: appending each to the buffer would copy the
        # body over and over.
        parts, have = [self._buffer], len(self._buffer)
        self._buffer = b""
        if size is None or size < 0:
            while chunk := self._next(-1):
                parts.append(chunk)
            return b"".join(parts)
        while have < size and (chunk := self._next(size - have)):
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self._buffer = data[size:]
        return data[:size]

    def readline(self, size=-1):
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                end += 1
                break
            if 0 <= (size if size is not None else -1) <= len(self._buffer):
                end = size
                break
            if not self._fill(-1):
                end = len(self._buffer)
                break
        if size is not None and 0 <= size < end:
            end = size
        line, self._buffer = self._buffer[:end], self._buffer[end:]
        return line

    def readlines(self, hint=-1):
        lines, total = [], 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def release(self, has_body):
        """Reads what the app left of the body, drops the stream, then finishes the body and
        drops its trailers future (children first: finishing a body whose stream is alive
        traps).

        The unread rest is skipped, as uWSGI does: a body left in the connection makes the host
        close a keep-alive connection, and the client's next request on it fails. fibhost's
        max-body-size bounds what there is to skip."""
        if not self._eof and (self._stream is not None or has_body):
            if self._stream is None:
                self._body = self._request.consume()
                self._stream = self._body.stream()
            try:
                while True:
                    self._stream.blocking_skip(1 << 20)
            except Err:
                pass  # closed: the end of the body (or the client went away)
        self._closed = True
        if self._stream is not None:
            self._stream.__exit__(None, None, None)
            self._stream = None
        if self._body is not None:
            trailers = IncomingBody.finish(self._body)
            self._body = None
            trailers.__exit__(None, None, None)
        self._request = None


class Response:
    """The response side of one request: start_response, write() and the body stream."""

    __slots__ = ("_out", "_head", "_status", "_headers", "_body", "_stream", "sent")

    def __init__(self, response_out, head):
        self._out = response_out
        self._head = head
        self._status = None
        self._headers = None
        self._body = None
        self._stream = None
        self.sent = False  # whether the head has gone to the host

    def start_response(self, status, response_headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.sent:
                    # Too late to change the status: PEP 3333 says re-raise.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self._status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        if not isinstance(status, str) or len(status) < 3 or not status[:3].isdigit():
            raise ValueError(f"bad status {status!r}: expected e.g. '200 OK'")
        self._status = int(status[:3])
        self._headers = response_headers
        return self.write

    def _send_head(self):
        if self._status is None:
            raise AssertionError("the application returned data before calling start_response")
        fields = []
        for name, value in self._headers:
            name = name.lower()
            if name not in HOP_BY_HOP:
                fields.append((name, value.encode("latin-1")))
        response = OutgoingResponse(Fields.from_list(fields))
        if self._status != 200:
            response.set_status_code(self._status)
        if not self._head:
            # HEAD takes no body: an empty body would contradict the Content-Length the host
            # checks against the bytes written.
            self._body = response.body()
        self.sent = True
        ResponseOutparam.set(self._out, Ok(response))
        if self._body is not None:
            self._stream = self._body.write()

    def write(self, data):
        """Writes `data` now (the legacy `write` callable, and each chunk of the iterable)."""
        if not self.sent:
            self._send_head()
        if self._stream is None or not data:
            return  # HEAD: the bytes are dropped
        write = self._stream.blocking_write_and_flush
        if len(data) <= IO_CHUNK:
            write(data)
        else:
            view = memoryview(data)
            for start in range(0, len(data), IO_CHUNK):
                write(bytes(view[start : start + IO_CHUNK]))

    def finish(self):
        """The body is complete: drop the stream, then finish the body."""
        if not self.sent:
            self._send_head()  # an empty body
        if self._stream is not None:
            self._stream.__exit__(None, None, None)
            self._stream = None
        if self._body is not None:
            body, self._body = self._body, None
            OutgoingBody.finish(body, None)

    def abort(self, message):
        """The application failed: fibhost's 500 if nothing was sent, else a broken body."""
        if not self.sent:
            self.sent = True
            ResponseOutparam.set(self._out, Err(ErrorCode_InternalError(message)))
            return
        if self._stream is not None:
            self._stream.__exit__(None, None, None)
            self._stream = None
        if self._body is not None:
            # Dropped without `finish`: the host treats the body as incomplete, so the client
            # sees a failed response instead of a short one that looks complete.
            body, self._body = self._body, None
            body.__exit__(None, None, None)


# The environ's entries that are the same for every request (copied, then filled in).
_ENVIRON_TEMPLATE = {
    # The app is mounted at the root of what it sees, unless fibhost says a route's
    # strip-prefix removed a prefix (the `fibhost-script-name` header, set only by fibhost).
    "SCRIPT_NAME": "",
    # wasi:http does not tell the request's HTTP version.
    "SERVER_PROTOCOL": "HTTP/1.1",
    "wsgi.version": (1, 0),
    "wsgi.multithread": False,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
    "wsgi.input_terminated": True,
    "wsgi.file_wrapper": FileWrapper,
}

# Field name -> environ key, memoised (the same few names come with every request).
_HEADER_KEYS = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


def _header_key(name):
    key = _HEADER_KEYS.get(name)
    if key is None:
        key = _HEADER_KEYS[name] = "HTTP_" + name.upper().replace("-", "_")
    return key


def _environ(request, method):
    """The PEP 3333 environ of `request` (its header fields are read and dropped here)."""
    target = request.path_with_query() or "/"
    path, _, query = target.partition("?")
    scheme = request.scheme()
    if scheme is None or isinstance(scheme, Scheme_Http):
        url_scheme = "http"
    elif isinstance(scheme, Scheme_Https):
        url_scheme = "https"
    else:
        url_scheme = scheme.value.lower()

    fields = request.headers()
    try:
        entries = fields.entries()
    finally:
        fields.__exit__(None, None, None)  # a child of the request: dropped before it

    environ = _ENVIRON_TEMPLATE.copy()
    environ["REQUEST_METHOD"] = method
    # Percent-decoded bytes carried in a str as latin-1, as PEP 3333 requires: the framework
    # re-encodes to latin-1 and decodes UTF-8 (Werkzeug and Django do). A path without `%` is
    # ASCII already (the host accepts nothing else in a request target).
    environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1") if "%" in path else path
    environ["QUERY_STRING"] = query
    environ["wsgi.url_scheme"] = url_scheme
    environ["wsgi.errors"] = sys.stderr
    for name, value in entries:
        key = _header_key(name)
        value = value.decode("latin-1")
        previous = environ.get(key)
        if previous is None:
            environ[key] = value
        else:
            # Repeated fields are joined, as a proxy would (cookies with "; ").
            environ[key] = previous + ("; " if key == "HTTP_COOKIE" else ", ") + value

    script_name = environ.pop("HTTP_FIBHOST_SCRIPT_NAME", None)
    if script_name:
        environ["SCRIPT_NAME"] = script_name

    host = environ.get("HTTP_HOST") or request.authority() or ""
    if host.startswith("["):  # [v6]:port
        end = host.find("]")
        name, port = host[: end + 1], host[end + 2 :]
    elif ":" in host:
        name, _, port = host.rpartition(":")
    else:
        name, port = host, ""
    environ["SERVER_NAME"] = name or "localhost"
    environ["SERVER_PORT"] = port or ("443" if url_scheme == "https" else "80")
    return environ


def _content_length(environ):
    value = environ.get("CONTENT_LENGTH")
    if value is None:
        return None
    try:
        return max(0, int(value))
    except ValueError:
        return None


class IncomingHandler(exports.IncomingHandler):
    """The component's export (componentize-py finds it by this name in the entry module)."""

    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = request.method()
        name = method.value if isinstance(method, Method_Other) else METHOD_NAMES[type(method)]
        response = Response(response_out, name == "HEAD")
        body = None
        environ = {}
        try:
            environ = _environ(request, name)
            body = Input(request, _content_length(environ))
            environ["wsgi.input"] = body
            _serve(environ, response)
        except BaseException:
            # Not the application's own error page (Flask renders those itself): the app
            # raised before start_response, or broke the protocol. Logged, answered, and the
            # instance goes on serving.
            traceback.print_exc(file=sys.stderr)
            response.abort("the WSGI application failed; see the log")
        finally:
            if body is not None:
                body.release(
                    environ.get("CONTENT_LENGTH", "0") not in ("", "0")
                    or "HTTP_TRANSFER_ENCODING" in environ
                )
            request.__exit__(None, None, None)


def _serve(environ, response):
    iterable = _application(environ, response.start_response)
    try:
        for chunk in iterable:
            if chunk:  # PEP 3333: an empty chunk does not force the head out
                response.write(chunk)
        response.finish()
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
