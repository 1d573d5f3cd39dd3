// {{name}}: a wasi:http guest for fibhost that greets every request.
//
// http_guest.h is generated from wit/ by wit-bindgen into build/ (see build.sh). Every `own`
// handle received is dropped or handed back to the host: the instance serves many requests.
#include <stdio.h>
#include <string.h>

#include "http_guest.h"

static const char GREETING[] = "Hello from C!\n";

// Cannot fail for valid names and values on fresh fields.
static void add_header(wasi_http_types_own_fields_t fields, const char *name, const char *value) {
  wasi_http_types_field_name_t n = {(uint8_t *)name, strlen(name)};
  wasi_http_types_field_value_t v = {(uint8_t *)value, strlen(value)};
  wasi_http_types_header_error_t err;
  if (!wasi_http_types_method_fields_append(wasi_http_types_borrow_fields(fields), &n, &v, &err))
    wasi_http_types_header_error_free(&err);
}

void exports_wasi_http_incoming_handler_handle(exports_wasi_http_incoming_handler_own_incoming_request_t request,
                                               exports_wasi_http_incoming_handler_own_response_outparam_t response_out) {
  wasi_http_types_method_t method;
  wasi_http_types_method_incoming_request_method(wasi_http_types_borrow_incoming_request(request), &method);
  bool head = method.tag == WASI_HTTP_TYPES_METHOD_HEAD;
  wasi_http_types_method_free(&method);
  wasi_http_types_incoming_request_drop_own(request);

  wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
  add_header(headers, "content-type", "text/plain");
  char length[24];
  snprintf(length, sizeof length, "%zu", sizeof GREETING - 1);
  add_header(headers, "content-length", length);
  wasi_http_types_own_outgoing_response_t response = wasi_http_types_constructor_outgoing_response(headers);
  wasi_http_types_own_outgoing_body_t body;
  // HEAD: the headers only. Taking the body and writing nothing would contradict the content-length.
  if (!head) wasi_http_types_method_outgoing_response_body(wasi_http_types_borrow_outgoing_response(response), &body);
  wasi_http_types_result_own_outgoing_response_error_code_t result = {.is_err = false, .val.ok = response};
  wasi_http_types_static_response_outparam_set(response_out, &result);
  if (head) return;

  wasi_http_types_own_output_stream_t stream;
  wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(body), &stream);
  http_guest_list_u8_t chunk = {(uint8_t *)GREETING, sizeof GREETING - 1};  // at most 4096 bytes per call
  wasi_io_streams_stream_error_t stream_err;
  // Fails only when the client has gone away: nobody is left to tell.
  if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(wasi_io_streams_borrow_output_stream(stream), &chunk, &stream_err))
    wasi_io_streams_stream_error_free(&stream_err);
  wasi_io_streams_output_stream_drop_own(stream);  // the stream must go before the body is finished
  wasi_http_types_error_code_t finish_err;
  if (!wasi_http_types_static_outgoing_body_finish(body, NULL, &finish_err))
    wasi_http_types_error_code_free(&finish_err);
}
