// The Fibonacci API as a `wasi:http/proxy` component, in C.
//
// All of the API lives in fibonacci.c; this file only moves a `wasi:http` request in and a
// `fib_reply_t` out, through the bindings that `wit-bindgen c` generates from `wit/` into
// `build/` (see `scripts/build-lang-guests.sh`).
//
// Ownership: the request and every `own` handle obtained here are dropped or handed back to
// the host before returning, and every allocation is freed. The instance serves many requests,
// so a leak here would grow it until the host recycles it.
#include <stdio.h>
#include <string.h>

#include "fibonacci.h"
#include "http_guest.h"

static const char *method_name(const wasi_http_types_method_t *m, size_t *len) {
  static const char *const names[] = {"GET",     "HEAD",    "POST",  "PUT",  "DELETE",
                                      "CONNECT", "OPTIONS", "TRACE", "PATCH"};
  if (m->tag == WASI_HTTP_TYPES_METHOD_OTHER) {
    *len = m->val.other.len;
    return (const char *)m->val.other.ptr;
  }
  *len = strlen(names[m->tag]);
  return names[m->tag];
}

// The names and values are valid and the fields are fresh and mutable, so this cannot fail.
static void append_header(wasi_http_types_borrow_fields_t fields, const char *name, const char *value) {
  wasi_http_types_field_name_t key = {(uint8_t *)name, strlen(name)};
  wasi_http_types_field_value_t val = {(uint8_t *)value, strlen(value)};
  wasi_http_types_header_error_t err;
  if (!wasi_http_types_method_fields_append(fields, &key, &val, &err)) {
    wasi_http_types_header_error_free(&err);
  }
}

static void set_response(wasi_http_types_own_response_outparam_t out, wasi_http_types_own_outgoing_response_t response) {
  wasi_http_types_result_own_outgoing_response_error_code_t result = {.is_err = false, .val.ok = response};
  wasi_http_types_static_response_outparam_set(out, &result);
}

// `blocking-write-and-flush` takes at most 4096 bytes per call.
#define WRITE_CHUNK 4096

static void write_body(wasi_http_types_own_outgoing_body_t body, const char *data, size_t len) {
  wasi_http_types_own_output_stream_t stream;
  if (wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(body), &stream)) {
    wasi_io_streams_borrow_output_stream_t s = wasi_io_streams_borrow_output_stream(stream);
    for (size_t at = 0; at < len; at += WRITE_CHUNK) {
      http_guest_list_u8_t chunk = {(uint8_t *)data + at, len - at < WRITE_CHUNK ? len - at : WRITE_CHUNK};
      wasi_io_streams_stream_error_t err;
      if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(s, &chunk, &err)) {
        // The client has gone away; there is nobody left to tell.
        wasi_io_streams_stream_error_free(&err);
        break;
      }
    }
    // The stream is a child of the body: it must be dropped before the body is finished.
    wasi_io_streams_output_stream_drop_own(stream);
  }
  wasi_http_types_error_code_t err;
  if (!wasi_http_types_static_outgoing_body_finish(body, NULL, &err)) {
    wasi_http_types_error_code_free(&err);
  }
}

void exports_wasi_http_incoming_handler_handle(exports_wasi_http_incoming_handler_own_incoming_request_t request,
                                               exports_wasi_http_incoming_handler_own_response_outparam_t response_out) {
  wasi_http_types_borrow_incoming_request_t req = wasi_http_types_borrow_incoming_request(request);
  wasi_http_types_method_t method;
  wasi_http_types_method_incoming_request_method(req, &method);
  http_guest_string_t target = {0};
  bool has_target = wasi_http_types_method_incoming_request_path_with_query(req, &target);

  size_t name_len;
  const char *name = method_name(&method, &name_len);
  fib_reply_t reply = fib_respond(name, name_len, has_target ? (const char *)target.ptr : "", target.len);
  bool head = method.tag == WASI_HTTP_TYPES_METHOD_HEAD;
  wasi_http_types_method_free(&method);
  if (has_target) http_guest_string_free(&target);
  wasi_http_types_incoming_request_drop_own(request);

  wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
  char length[24];
  snprintf(length, sizeof length, "%zu", reply.body_len);
  append_header(wasi_http_types_borrow_fields(headers), "content-type", FIB_CONTENT_TYPE);
  append_header(wasi_http_types_borrow_fields(headers), "content-length", length);
  if (reply.allow) append_header(wasi_http_types_borrow_fields(headers), "allow", FIB_ALLOWED_METHODS);
  wasi_http_types_own_outgoing_response_t response = wasi_http_types_constructor_outgoing_response(headers);
  wasi_http_types_borrow_outgoing_response_t borrowed = wasi_http_types_borrow_outgoing_response(response);
  wasi_http_types_method_outgoing_response_set_status_code(borrowed, reply.status);

  if (head) {
    // HEAD: the headers of GET (Content-Length included) and no body. Not taking the body at
    // all is what keeps the host from checking the length against zero written bytes.
    set_response(response_out, response);
  } else {
    wasi_http_types_own_outgoing_body_t body;
    // Taking the body of a fresh response cannot fail.
    bool has_body = wasi_http_types_method_outgoing_response_body(borrowed, &body);
    set_response(response_out, response);
    if (has_body) write_body(body, reply.body, reply.body_len);
  }
  fib_reply_free(&reply);
}
