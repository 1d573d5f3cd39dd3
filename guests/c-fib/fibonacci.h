// The Fibonacci API, independent of any HTTP library: a request's method and target in, a
// status and a JSON body out. Byte for byte the answers of the Rust crate `crates/fibonacci`.
#ifndef FIBONACCI_H
#define FIBONACCI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// The longest number (in digits, leading zeros included, sign excluded) that `GET /<n>` accepts.
#define FIB_MAX_DIGITS 1024
// The `Allow` header value sent with 405 responses.
#define FIB_ALLOWED_METHODS "GET, HEAD"
// The content type of every response of the API, errors included.
#define FIB_CONTENT_TYPE "application/json"

typedef struct {
  uint16_t status;
  // Whether the response must carry `Allow: GET, HEAD` (405 only).
  bool allow;
  // The JSON body, owned (free it with `fib_reply_free`). For HEAD it is the body GET would
  // send, so that the caller can report its length; the caller must not send it.
  char *body;
  size_t body_len;
} fib_reply_t;

// Answers one request: `method` as sent (e.g. "GET"), `target` the path with its optional
// query (e.g. "/9000?x=1"; the query is ignored). Neither needs to be NUL-terminated.
fib_reply_t fib_respond(const char *method, size_t method_len, const char *target, size_t target_len);

void fib_reply_free(fib_reply_t *reply);

#endif
