"""{{name}}: a wasi:http guest for fibhost that greets every request.

componentize-py finds the class `IncomingHandler` in this module; `wit_world` is the package
it generates from `wit/` while it builds (see build.sh).
"""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Head,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

GREETING = b"Hello from Python!\n"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        headers = Fields.from_list(
            [("content-type", b"text/plain"), ("content-length", str(len(GREETING)).encode())]
        )
        response = OutgoingResponse(headers)
        if isinstance(request.method(), Method_Head):
            # HEAD: the headers only. Taking the body and writing nothing would contradict
            # the content-length.
            ResponseOutparam.set(response_out, Ok(response))
            return
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        # The stream must be dropped (the end of `with`) before the body is finished.
        with body.write() as stream:
            try:
                stream.blocking_write_and_flush(GREETING)
            except Err:
                pass  # the client has gone away: nobody is left to tell
        OutgoingBody.finish(body, None)
