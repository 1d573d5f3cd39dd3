#include "json.h"

#include <stdlib.h>
#include <string.h>

void buf_append(buf_t *b, const void *data, size_t len) {
  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + len) cap *= 2;
    char *grown = realloc(b->data, cap);
    if (!grown) abort();
    b->data = grown;
    b->cap = cap;
  }
  if (len) memcpy(b->data + b->len, data, len);
  b->len += len;
}

void buf_append_str(buf_t *b, const char *s) { buf_append(b, s, strlen(s)); }

void buf_free(buf_t *b) {
  free(b->data);
  *b = (buf_t){0};
}

bool utf8_valid(const uint8_t *s, size_t len) {
  for (size_t i = 0; i < len;) {
    uint8_t c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t n;
    uint32_t cp, min;
    if ((c & 0xE0) == 0xC0) {
      n = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      n = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      n = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (len - i < n) return false;
    for (size_t k = 1; k < n; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = cp << 6 | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

// Nesting beyond this is refused rather than risking the (small) wasm stack.
#define MAX_DEPTH 512

typedef struct {
  const uint8_t *p, *end;
  int depth;
} parser_t;

static bool more(const parser_t *ps) { return ps->p < ps->end; }

static void skip_ws(parser_t *ps) {
  while (more(ps) && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static bool literal(parser_t *ps, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return false;
  ps->p += n;
  return true;
}

static bool is_hex(uint8_t c) { return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f'); }

static bool string(parser_t *ps) {
  ps->p++;  // the opening quote
  while (more(ps)) {
    uint8_t c = *ps->p++;
    if (c == '"') return true;
    if (c < 0x20) return false;
    if (c != '\\') continue;
    if (!more(ps)) return false;
    c = *ps->p++;
    if (c == 'u') {
      for (int i = 0; i < 4; i++, ps->p++)
        if (!more(ps) || !is_hex(*ps->p)) return false;
    } else if (c == 0 || !strchr("\"\\/bfnrt", c)) {
      return false;
    }
  }
  return false;
}

static bool digits(parser_t *ps) {
  const uint8_t *start = ps->p;
  while (more(ps) && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  return ps->p > start;
}

static bool number(parser_t *ps) {
  if (*ps->p == '-') ps->p++;
  if (more(ps) && *ps->p == '0') {
    ps->p++;
  } else if (!digits(ps)) {
    return false;
  }
  if (more(ps) && *ps->p == '.') {
    ps->p++;
    if (!digits(ps)) return false;
  }
  if (more(ps) && (*ps->p == 'e' || *ps->p == 'E')) {
    ps->p++;
    if (more(ps) && (*ps->p == '+' || *ps->p == '-')) ps->p++;
    if (!digits(ps)) return false;
  }
  return true;
}

static bool value(parser_t *ps);

// An object or an array, the opening bracket at ps->p.
static bool container(parser_t *ps) {
  uint8_t close = *ps->p++ == '{' ? '}' : ']';
  if (++ps->depth > MAX_DEPTH) return false;
  skip_ws(ps);
  if (more(ps) && *ps->p == close) {
    ps->p++;
    ps->depth--;
    return true;
  }
  for (;;) {
    if (close == '}') {
      skip_ws(ps);
      if (!more(ps) || *ps->p != '"' || !string(ps)) return false;
      skip_ws(ps);
      if (!more(ps) || *ps->p++ != ':') return false;
    }
    if (!value(ps)) return false;
    skip_ws(ps);
    if (!more(ps)) return false;
    uint8_t c = *ps->p++;
    if (c == close) {
      ps->depth--;
      return true;
    }
    if (c != ',') return false;
  }
}

static bool value(parser_t *ps) {
  skip_ws(ps);
  if (!more(ps)) return false;
  switch (*ps->p) {
    case '{':
    case '[':
      return container(ps);
    case '"':
      return string(ps);
    case 't':
      return literal(ps, "true");
    case 'f':
      return literal(ps, "false");
    case 'n':
      return literal(ps, "null");
    default:
      return number(ps);
  }
}

bool json_valid(const uint8_t *s, size_t len) {
  if (!utf8_valid(s, len)) return false;
  parser_t ps = {s, s + len, 0};
  if (!value(&ps)) return false;
  skip_ws(&ps);
  return !more(&ps);
}

void json_string(buf_t *out, const char *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  buf_append(out, "\"", 1);
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    const char *esc = NULL;
    switch (c) {
      case '"': esc = "\\\""; break;
      case '\\': esc = "\\\\"; break;
      case '\b': esc = "\\b"; break;
      case '\f': esc = "\\f"; break;
      case '\n': esc = "\\n"; break;
      case '\r': esc = "\\r"; break;
      case '\t': esc = "\\t"; break;
    }
    if (esc) {
      buf_append_str(out, esc);
    } else if (c < 0x20) {
      char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xF]};
      buf_append(out, u, sizeof u);
    } else {
      buf_append(out, &s[i], 1);
    }
  }
  buf_append(out, "\"", 1);
}
