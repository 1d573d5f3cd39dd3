// {{name}}: a wasi:http guest for fibhost that greets every request.
//
// componentize-js runs this module in StarlingMonkey (SpiderMonkey for WebAssembly) and turns
// the service-worker `fetch` event into the component's wasi:http/incoming-handler export.

const GREETING = 'Hello from JavaScript!\n';

addEventListener('fetch', (event) => {
  const body = new TextEncoder().encode(GREETING);
  const headers = { 'content-type': 'text/plain', 'content-length': String(body.length) };
  // HEAD: the same headers and no body.
  event.respondWith(new Response(event.request.method === 'HEAD' ? null : body, { headers }));
});
