// JSON for the handler: a growable byte buffer, a validator and string escaping.
#ifndef JSON_H
#define JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Bytes that grow as they are appended to.
typedef struct {
  char *data;
  size_t len, cap;
} buf_t;

// Appends len bytes; abort()s when memory runs out (a trap: fibhost answers 500 and replaces
// the instance).
void buf_append(buf_t *b, const void *data, size_t len);
void buf_append_str(buf_t *b, const char *s);
void buf_free(buf_t *b);

// Whether s is well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
bool utf8_valid(const uint8_t *s, size_t len);

// Whether s is one JSON value (RFC 8259) in UTF-8, with optional whitespace around it.
bool json_valid(const uint8_t *s, size_t len);

// Appends s (UTF-8) as a JSON string, quotes included.
void json_string(buf_t *out, const char *s, size_t len);

#endif
