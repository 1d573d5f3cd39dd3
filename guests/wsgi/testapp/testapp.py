"""A WSGI application that exercises the bridge (guests/wsgi/fibhost_wsgi.py).

tests/e2e/wsgi.rs serves it under fibhost and under uWSGI and checks that both answer every
request alike. `application` is the WSGI callable: paths under /raw/ are plain PEP 3333
functions (the legacy write() callable, exc_info, an iterable's close(), an error before
start_response, wsgi.file_wrapper); everything else goes to a Flask app.

No answer may depend on the server: no addresses, ports, protocol versions or timings.
"""

import hashlib
import io
import json
import sys

from flask import Flask, Response, abort, jsonify, request

app = Flask(__name__)

# Iterables whose close() the server has called (per process: both servers run one worker).
closed = 0


@app.route("/echo", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
def echo():
    """What the application saw of the request."""
    environ = request.environ
    return jsonify(
        method=request.method,
        path=request.path,
        script_name=environ["SCRIPT_NAME"],
        query_string=environ["QUERY_STRING"],
        args={key: request.args.getlist(key) for key in sorted(request.args)},
        url_scheme=environ["wsgi.url_scheme"],
        content_type=environ.get("CONTENT_TYPE", ""),
        content_length=environ.get("CONTENT_LENGTH", ""),
        x_headers={k: v for k, v in sorted(environ.items()) if k.startswith("HTTP_X_")},
        cookies=dict(sorted(request.cookies.items())),
        body_length=len(request.get_data()),
    )


@app.post("/json")
def json_body():
    data = request.get_json()
    numbers = data.get("numbers", [])
    return jsonify(received=data, total=sum(numbers), count=len(numbers)), 201


@app.route("/teapot")
def teapot():
    abort(418)


@app.route("/missing-item/<int:item>")
def missing(item):
    abort(404, description=f"no item {item}")


@app.route("/stream")
def stream():
    """A generator of lines, never joined: the server must send it chunk by chunk."""
    lines = request.args.get("lines", 2000, type=int)

    def generate():
        for i in range(lines):
            yield f"line {i:05d} {'x' * 40}\n"

    return Response(generate(), mimetype="text/plain")


@app.route("/boom")
def boom():
    raise RuntimeError("the application failed on purpose")


@app.post("/upload")
def upload():
    """Reads the body in pieces from wsgi.input, as a streaming consumer would."""
    digest, length = hashlib.sha256(), 0
    stream = request.stream
    while True:
        piece = stream.read(65536)
        if not piece:
            break
        digest.update(piece)
        length += len(piece)
    return jsonify(length=length, sha256=digest.hexdigest())


@app.route("/name/<name>")
def name(name):
    return Response(f"hello, {name} ({len(name)} characters)\n", mimetype="text/plain")


@app.route("/headers")
def headers():
    response = Response("headers set\n", mimetype="text/plain")
    response.headers["X-Custom"] = "custom value"
    response.headers["Cache-Control"] = "no-store"
    response.set_cookie("first", "1")
    response.set_cookie("second", "2")
    return response


@app.route("/redirect")
def redirect_view():
    return Response("", status=302, headers={"Location": "/echo"})


# --- plain WSGI -------------------------------------------------------------------------------


def raw_write(environ, start_response):
    """The legacy write() callable, then an iterable for the rest."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written 1\n")
    write(b"written 2\n")
    return [b"returned 3\n"]


def raw_early_error(environ, start_response):
    raise ValueError("an error before start_response")


def raw_exc_info(environ, start_response):
    """An error after start_response, before any body: the status is replaced."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise KeyError("late")
    except KeyError:
        exc_info = sys.exc_info()
    # Outside the except block: uWSGI 2.0.31 fails (SystemError) when start_response is called
    # while an exception is being handled.
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")], exc_info)
    return [b"replaced by exc_info\n"]


class Closing:
    """An iterable whose close() counts itself."""

    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        global closed
        closed += 1


def raw_close(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Closing([b"a", b"b", b"c\n"])


def raw_closed(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{closed}\n".encode()]


def raw_file_wrapper(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    data = bytes(range(256)) * 100
    return environ["wsgi.file_wrapper"](io.BytesIO(data), 4096)


def raw_input_lines(environ, start_response):
    """wsgi.input read line by line (readline and iteration)."""
    stream = environ["wsgi.input"]
    first = stream.readline()
    rest = list(stream)
    start_response("200 OK", [("Content-Type", "application/json")])
    body = {"first": first.decode(), "rest": [line.decode() for line in rest]}
    return [json.dumps(body).encode()]


RAW = {
    "/raw/write": raw_write,
    "/raw/early-error": raw_early_error,
    "/raw/exc-info": raw_exc_info,
    "/raw/close": raw_close,
    "/raw/closed": raw_closed,
    "/raw/file-wrapper": raw_file_wrapper,
    "/raw/input-lines": raw_input_lines,
}


def application(environ, start_response):
    raw = RAW.get(environ.get("PATH_INFO", ""))
    if raw is not None:
        return raw(environ, start_response)
    return app(environ, start_response)
