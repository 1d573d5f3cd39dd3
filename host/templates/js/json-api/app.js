// {{name}}: a JSON API as a wasi:http guest for fibhost.
//
// - `GET /hello?name=Ada` → `{"message":"Hello, Ada!"}` (name percent-decoded, default "world")
// - `POST /echo` with a JSON body → `{"received":<the body as sent>}`
// - HEAD of `/hello` → GET's headers; other methods → 405 with `Allow`; other paths → 404;
//   a bad query or body → 400. Every error is `{"error":"..."}`.
//
// componentize-js runs this module in StarlingMonkey (SpiderMonkey for WebAssembly) and turns
// the service-worker `fetch` event into the component's wasi:http/incoming-handler export.

class HttpError extends Error {
  constructor(status, message, allow) {
    super(message);
    this.status = status;
    this.allow = allow;
  }
}

/** `GET /hello?name=...` */
function hello(query) {
  let name = '';
  for (const pair of query.split('&')) {
    const eq = pair.indexOf('=');
    const [key, value] = eq < 0 ? [pair, ''] : [pair.slice(0, eq), pair.slice(eq + 1)];
    if (key !== 'name') continue;
    try {
      // Throws on a malformed escape and on bytes that are not UTF-8.
      name = decodeURIComponent(value.replaceAll('+', ' '));
    } catch {
      throw new HttpError(400, '`name` is not valid percent-encoded UTF-8');
    }
    break;
  }
  return JSON.stringify({ message: `Hello, ${name || 'world'}!` });
}

/** `POST /echo`: the body, checked to be JSON, sent back as it came. */
async function echo(request) {
  // arrayBuffer() reads the body to its end (fibhost caps its size).
  const bytes = await request.arrayBuffer();
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    JSON.parse(text);
  } catch {
    throw new HttpError(400, 'the body is not valid JSON');
  }
  return `{"received":${text.trim()}}`;
}

async function route(request) {
  const url = new URL(request.url);
  if (url.pathname === '/hello') {
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      throw new HttpError(405, 'method not allowed; allowed: GET, HEAD', 'GET, HEAD');
    }
    return hello(url.search.slice(1));
  }
  if (url.pathname === '/echo') {
    if (request.method !== 'POST') {
      throw new HttpError(405, 'method not allowed; allowed: POST', 'POST');
    }
    return echo(request);
  }
  throw new HttpError(404, 'not found; try GET /hello?name=you or POST /echo');
}

async function handle(request) {
  let status = 200;
  let text;
  const headers = { 'content-type': 'application/json' };
  try {
    text = await route(request);
  } catch (e) {
    if (!(e instanceof HttpError)) throw e;
    status = e.status;
    text = JSON.stringify({ error: e.message });
    if (e.allow) headers.allow = e.allow;
  }
  const body = new TextEncoder().encode(text);
  headers['content-length'] = String(body.length);
  // HEAD: the same headers and no body.
  return new Response(request.method === 'HEAD' ? null : body, { status, headers });
}

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));
