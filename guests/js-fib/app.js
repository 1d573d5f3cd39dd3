// The Fibonacci API as a `wasi:http/proxy` component, in JavaScript.
//
// `GET /<n>` answers the Fibonacci sequence seeded with 0 and 1, extended while its last element
// is below n, as a JSON array. The responses are byte for byte those of the Rust guest
// (`crates/fibonacci`), so that benchmarks compare languages, not two different APIs; the one
// exception is odd paths, which StarlingMonkey's URL parser normalises before we see them
// (`/1/../5` arrives as `/5`, `\` as `/`, `"` as `%22`).
//
// componentize-js runs this file in StarlingMonkey (SpiderMonkey for WASI) and turns the
// service-worker style `fetch` event below into the `wasi:http/incoming-handler` export.
// BigInt makes the arithmetic exact for every accepted n. Built by
// `scripts/build-lang-guests.sh js` against `wit/0.2.10/`, StarlingMonkey's WASI version.
//
// Serve it with `--max-requests 1`: StarlingMonkey keeps one FetchEvent per instance and cannot
// dispatch a second request on it (StarlingMonkey issue #247; see guests/README.md).

/** The longest number (in digits, leading zeros included, sign excluded) that `GET /<n>` accepts. */
const MAX_DIGITS = 1024;
const ALLOWED_METHODS = 'GET, HEAD';
const CONTENT_TYPE = 'application/json';

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The sequence seeded with 0 and 1, extended while its last element is below `n` (a BigInt). */
function fibonacci(n) {
  const sequence = [0n, 1n];
  let [a, b] = [0n, 1n];
  while (b < n) {
    [a, b] = [b, a + b];
    sequence.push(b);
  }
  return sequence;
}

/** Parses `/<n>`'s segment, with the Rust guest's error messages. */
function parseInteger(text) {
  const start = text.startsWith('+') || text.startsWith('-') ? 1 : 0;
  if (start === text.length) {
    throw new HttpError(400, `\`${text}\` is not an integer: expected digits after the sign`);
  }
  for (let i = start; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x30 || c > 0x39) {
      // The path reaches us already percent-encoded by the URL parser, so it is ASCII and
      // character positions are byte positions, as in the Rust guest.
      const shown = c >= 0x21 && c <= 0x7e ? `'${text[i]}'` : `byte 0x${c.toString(16).padStart(2, '0')}`;
      throw new HttpError(
        400,
        `\`${text}\` is not an integer: unexpected ${shown} at position ${i + 1}; ` +
          'expected an optional sign followed by ASCII digits',
      );
    }
  }
  const digits = text.length - start;
  if (digits > MAX_DIGITS) {
    throw new HttpError(400, `the number has ${digits} digits; the limit is ${MAX_DIGITS}`);
  }
  return BigInt(text);
}

/** Answers one request: returns the status, the JSON body and any extra headers. */
function respond(method, pathname) {
  try {
    if (method !== 'GET' && method !== 'HEAD') {
      throw new HttpError(405, `method ${method} is not allowed; use GET or HEAD`);
    }
    const segment = pathname.slice(1);
    if (!pathname.startsWith('/') || segment === '' || segment.includes('/')) {
      throw new HttpError(404, 'not found; use GET /<n>, for example /9000');
    }
    // `Array.prototype.join` prints BigInts in decimal, without the `n` suffix.
    return { status: 200, body: `[${fibonacci(parseInteger(segment)).join(', ')}]`, headers: {} };
  } catch (e) {
    if (!(e instanceof HttpError)) throw e;
    // Spelled out rather than `JSON.stringify({ error })`, which would drop the space after
    // the colon that the Rust guest writes.
    const body = `{"error": ${JSON.stringify(e.message)}}`;
    const headers = e.status === 405 ? { allow: ALLOWED_METHODS } : {};
    return { status: e.status, body, headers };
  }
}

addEventListener('fetch', (event) => {
  const { method } = event.request;
  const { pathname } = new URL(event.request.url);
  const { status, body, headers } = respond(method, pathname);
  const bytes = new TextEncoder().encode(body);
  const init = {
    status,
    headers: { ...headers, 'content-type': CONTENT_TYPE, 'content-length': String(bytes.length) },
  };
  // HEAD: the headers of GET, Content-Length included, and no body.
  event.respondWith(new Response(method === 'HEAD' ? null : bytes, init));
});
