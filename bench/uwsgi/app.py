"""The Fibonacci API as the article's Flask application, for the uWSGI comparison.

It answers like `crates/fibonacci` (the Rust implementation behind the fib guest and the
native baseline): `GET /<n>` returns the sequence seeded with 0 and 1, extended while its last
element is below `n`, as a JSON array with ", " between elements; bad numbers are 400, other
paths 404, other methods 405 with `Allow: GET, HEAD`, every body JSON. Python's integers are
arbitrary precision, so no big-number code is needed. The benchmark checks that `/9000`
answers byte for byte like the native server before measuring.
"""

import re

from flask import Flask, Response, request

MAX_DIGITS = 1024
ALLOWED_METHODS = "GET, HEAD"
CONTENT_TYPE = "application/json"
NOT_FOUND = "not found; use GET /<n>, for example /9000"

# ASCII only: str.isdigit() would accept other scripts' digits, which the Rust parser refuses.
NUMBER = re.compile(r"[+-]?[0-9]+", re.ASCII)

app = Flask(__name__)


def sequence(n):
    """The sequence seeded with 0 and 1, extended while its last element is below `n`."""
    seq = [0, 1]
    while seq[-1] < n:
        seq.append(seq[-2] + seq[-1])
    return seq


def error(status, message):
    escaped = message.replace("\\", "\\\\").replace('"', '\\"')
    escaped = re.sub(r"[\x00-\x1f]", lambda m: "\\u%04x" % ord(m.group()), escaped)
    response = Response('{"error": "%s"}' % escaped, status, content_type=CONTENT_TYPE)
    if status == 405:
        response.headers["Allow"] = ALLOWED_METHODS
    return response


def parse_error(segment):
    """The same messages as `fibonacci::ParseError::message`."""
    sign = 1 if segment[:1] in ("+", "-") else 0
    digits = segment[sign:]
    if not digits:
        return f"`{segment}` is not an integer: expected digits after the sign"
    for i, c in enumerate(digits):
        if not "0" <= c <= "9":
            shown = f"'{c}'" if "!" <= c <= "~" else f"byte 0x{ord(c):02x}"
            return (
                f"`{segment}` is not an integer: unexpected {shown} at position {sign + i + 1}; "
                "expected an optional sign followed by ASCII digits"
            )
    return f"the number has {len(digits)} digits; the limit is {MAX_DIGITS}"


# Every method is routed here so that the API, not Flask, answers 404 and 405 (Flask's own
# pages are HTML and list OPTIONS as allowed).
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


@app.route("/", defaults={"segment": ""}, methods=METHODS, provide_automatic_options=False)
@app.route("/<path:segment>", methods=METHODS, provide_automatic_options=False)
def fibonacci(segment):
    if request.method not in ("GET", "HEAD"):
        return error(405, f"method {request.method} is not allowed; use GET or HEAD")
    if not segment or "/" in segment:
        return error(404, NOT_FOUND)
    if not NUMBER.fullmatch(segment) or len(segment.lstrip("+-")) > MAX_DIGITS:
        return error(400, parse_error(segment))
    body = "[" + ", ".join(map(str, sequence(int(segment)))) + "]"
    # Werkzeug drops the body of HEAD responses and keeps this Content-Length.
    return Response(body, 200, content_type=CONTENT_TYPE)
