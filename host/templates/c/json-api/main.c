// {{name}}: a JSON API as a wasi:http guest for fibhost.
//
// - `GET /hello?name=Ada` → `{"message":"Hello, Ada!"}` (name percent-decoded, default "world")
// - `POST /echo` with a JSON body → `{"received":<the body as sent>}`
// - HEAD of `/hello` → GET's headers; other methods → 405 with `Allow`; other paths → 404;
//   a bad query or body → 400. Every error is `{"error":"..."}`.
//
// http_guest.h is generated from wit/ by wit-bindgen into build/ (see build.sh). Every `own`
// handle received is dropped or handed back to the host, and everything allocated is freed:
// the instance serves many requests.
#include <stdio.h>
#include <string.h>

#include "http_guest.h"
#include "json.h"

typedef struct {
  uint16_t status;
  buf_t body;  // JSON
  const char *allow;
} reply_t;

static reply_t error_reply(uint16_t status, const char *message) {
  reply_t r = {.status = status};
  buf_append_str(&r.body, "{\"error\":");
  json_string(&r.body, message, strlen(message));
  buf_append_str(&r.body, "}");
  return r;
}

static reply_t not_allowed(const char *allow) {
  char message[64];
  snprintf(message, sizeof message, "method not allowed; allowed: %s", allow);
  reply_t r = error_reply(405, message);
  r.allow = allow;
  return r;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') return (c | 0x20) - 'a' + 10;
  return -1;
}

// `+` is a space and `%XX` the byte XX; false when an escape is malformed or the bytes are
// not UTF-8.
static bool percent_decode(const char *s, size_t len, buf_t *out) {
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (c == '+') {
      c = ' ';
    } else if (c == '%') {
      if (i + 2 >= len || hex_value(s[i + 1]) < 0 || hex_value(s[i + 2]) < 0) return false;
      c = (char)(hex_value(s[i + 1]) << 4 | hex_value(s[i + 2]));
      i += 2;
    }
    buf_append(out, &c, 1);
  }
  return utf8_valid((const uint8_t *)out->data, out->len);
}

// `GET /hello?name=...`
static reply_t hello(const char *query, size_t len) {
  buf_t name = {0};
  for (size_t start = 0; start <= len;) {
    const char *pair = query + start;
    const char *amp = memchr(pair, '&', len - start);
    size_t pair_len = amp ? (size_t)(amp - pair) : len - start;
    start += pair_len + 1;
    const char *eq = memchr(pair, '=', pair_len);
    size_t key_len = eq ? (size_t)(eq - pair) : pair_len;
    if (key_len != 4 || memcmp(pair, "name", 4) != 0) continue;
    if (eq && !percent_decode(eq + 1, pair_len - key_len - 1, &name)) {
      buf_free(&name);
      return error_reply(400, "`name` is not valid percent-encoded UTF-8");
    }
    break;
  }
  if (name.len == 0) buf_append_str(&name, "world");
  buf_t message = {0};
  buf_append_str(&message, "Hello, ");
  buf_append(&message, name.data, name.len);
  buf_append_str(&message, "!");
  reply_t r = {.status = 200};
  buf_append_str(&r.body, "{\"message\":");
  json_string(&r.body, message.data, message.len);
  buf_append_str(&r.body, "}");
  buf_free(&name);
  buf_free(&message);
  return r;
}

// Reads the whole request body, in chunks, to its end (fibhost caps its size with
// max-body-size). False if the client went away.
static bool read_body(wasi_http_types_borrow_incoming_request_t request, buf_t *out) {
  wasi_http_types_own_incoming_body_t body;
  if (!wasi_http_types_method_incoming_request_consume(request, &body)) return false;
  wasi_http_types_own_input_stream_t stream;
  bool ok = wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body), &stream);
  while (ok) {
    http_guest_list_u8_t chunk;
    wasi_io_streams_stream_error_t err;
    if (wasi_io_streams_method_input_stream_blocking_read(wasi_io_streams_borrow_input_stream(stream), 64 * 1024, &chunk, &err)) {
      buf_append(out, chunk.ptr, chunk.len);
      http_guest_list_u8_free(&chunk);
      continue;
    }
    ok = err.tag == WASI_IO_STREAMS_STREAM_ERROR_CLOSED;  // closed: the end of the body
    wasi_io_streams_stream_error_free(&err);
    wasi_io_streams_input_stream_drop_own(stream);  // the stream must go before its body
    break;
  }
  wasi_http_types_incoming_body_drop_own(body);
  return ok;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// `POST /echo`: the body, checked to be JSON, sent back as it came.
static reply_t echo(wasi_http_types_borrow_incoming_request_t request) {
  buf_t body = {0};
  if (!read_body(request, &body)) {
    buf_free(&body);
    return error_reply(400, "the request body could not be read");
  }
  if (!json_valid((const uint8_t *)body.data, body.len)) {
    buf_free(&body);
    return error_reply(400, "the body is not valid JSON");
  }
  size_t start = 0, end = body.len;
  while (start < end && is_space(body.data[start])) start++;
  while (end > start && is_space(body.data[end - 1])) end--;
  reply_t r = {.status = 200};
  buf_append_str(&r.body, "{\"received\":");
  buf_append(&r.body, body.data + start, end - start);
  buf_append_str(&r.body, "}");
  buf_free(&body);
  return r;
}

static reply_t route(wasi_http_types_borrow_incoming_request_t request, const wasi_http_types_method_t *method,
                     const char *target, size_t len) {
  const char *question = memchr(target, '?', len);
  size_t path_len = question ? (size_t)(question - target) : len;
  const char *query = question ? question + 1 : "";
  size_t query_len = question ? len - path_len - 1 : 0;
  if (path_len == 6 && memcmp(target, "/hello", 6) == 0) {
    if (method->tag != WASI_HTTP_TYPES_METHOD_GET && method->tag != WASI_HTTP_TYPES_METHOD_HEAD)
      return not_allowed("GET, HEAD");
    return hello(query, query_len);
  }
  if (path_len == 5 && memcmp(target, "/echo", 5) == 0) {
    if (method->tag != WASI_HTTP_TYPES_METHOD_POST) return not_allowed("POST");
    return echo(request);
  }
  return error_reply(404, "not found; try GET /hello?name=you or POST /echo");
}

// Cannot fail for valid names and values on fresh fields.
static void add_header(wasi_http_types_own_fields_t fields, const char *name, const char *value) {
  wasi_http_types_field_name_t n = {(uint8_t *)name, strlen(name)};
  wasi_http_types_field_value_t v = {(uint8_t *)value, strlen(value)};
  wasi_http_types_header_error_t err;
  if (!wasi_http_types_method_fields_append(wasi_http_types_borrow_fields(fields), &n, &v, &err))
    wasi_http_types_header_error_free(&err);
}

// Sends the reply; for HEAD, the headers only (content-length included).
static void send(wasi_http_types_own_response_outparam_t response_out, const reply_t *reply, bool head) {
  wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
  char length[24];
  snprintf(length, sizeof length, "%zu", reply->body.len);
  add_header(headers, "content-type", "application/json");
  add_header(headers, "content-length", length);
  if (reply->allow) add_header(headers, "allow", reply->allow);
  wasi_http_types_own_outgoing_response_t response = wasi_http_types_constructor_outgoing_response(headers);
  wasi_http_types_borrow_outgoing_response_t borrowed = wasi_http_types_borrow_outgoing_response(response);
  wasi_http_types_method_outgoing_response_set_status_code(borrowed, reply->status);
  wasi_http_types_own_outgoing_body_t body;
  // Taking the body and writing nothing would contradict the content-length.
  if (!head) wasi_http_types_method_outgoing_response_body(borrowed, &body);
  wasi_http_types_result_own_outgoing_response_error_code_t result = {.is_err = false, .val.ok = response};
  wasi_http_types_static_response_outparam_set(response_out, &result);
  if (head) return;

  wasi_http_types_own_output_stream_t stream;
  wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(body), &stream);
  for (size_t at = 0; at < reply->body.len; at += 4096) {  // at most 4096 bytes per call
    size_t n = reply->body.len - at < 4096 ? reply->body.len - at : 4096;
    http_guest_list_u8_t chunk = {(uint8_t *)reply->body.data + at, n};
    wasi_io_streams_stream_error_t err;
    if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(wasi_io_streams_borrow_output_stream(stream), &chunk, &err)) {
      wasi_io_streams_stream_error_free(&err);  // the client has gone away: nobody is left to tell
      break;
    }
  }
  wasi_io_streams_output_stream_drop_own(stream);  // the stream must go before the body is finished
  wasi_http_types_error_code_t finish_err;
  if (!wasi_http_types_static_outgoing_body_finish(body, NULL, &finish_err))
    wasi_http_types_error_code_free(&finish_err);
}

void exports_wasi_http_incoming_handler_handle(exports_wasi_http_incoming_handler_own_incoming_request_t request,
                                               exports_wasi_http_incoming_handler_own_response_outparam_t response_out) {
  wasi_http_types_borrow_incoming_request_t req = wasi_http_types_borrow_incoming_request(request);
  wasi_http_types_method_t method;
  wasi_http_types_method_incoming_request_method(req, &method);
  http_guest_string_t target = {0};
  bool has_target = wasi_http_types_method_incoming_request_path_with_query(req, &target);
  reply_t reply = route(req, &method, has_target ? (const char *)target.ptr : "", target.len);
  bool head = method.tag == WASI_HTTP_TYPES_METHOD_HEAD;
  wasi_http_types_method_free(&method);
  if (has_target) http_guest_string_free(&target);
  wasi_http_types_incoming_request_drop_own(request);
  send(response_out, &reply, head);
  buf_free(&reply.body);
}
