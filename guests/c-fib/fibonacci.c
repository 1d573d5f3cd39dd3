// The Fibonacci API: request parsing, the sequence, and the exact response bodies.
//
// `GET /<n>`: the sequence seeded with 0 and 1, extended while its last element is below n, as
// a JSON array with ", " between elements. C has no big integers, so numbers are arrays of
// base-10^9 limbs: a sum of two limbs fits in a uint32_t, and printing in decimal needs no
// division. Nothing here keeps state between calls: an instance serves many requests.
#include "fibonacci.h"

#include <stdlib.h>
#include <string.h>

// --- A growable byte buffer -------------------------------------------------------------------

typedef struct {
  char *data;
  size_t len, cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t extra) {
  if (b->len + extra <= b->cap) return;
  size_t cap = b->cap ? b->cap * 2 : 256;
  if (cap < b->len + extra) cap = b->len + extra;
  char *data = realloc(b->data, cap);
  // Out of memory means the instance hit its memory limit: trapping makes the host answer 500
  // and replace the instance, which is the right outcome.
  if (!data) abort();
  b->data = data;
  b->cap = cap;
}

static void buf_put(buf_t *b, const char *s, size_t n) {
  buf_reserve(b, n);
  memcpy(b->data + b->len, s, n);
  b->len += n;
}

static void buf_puts(buf_t *b, const char *s) { buf_put(b, s, strlen(s)); }

// Writes `v` in decimal, left-padded with zeros to `width` digits.
static void buf_put_uint(buf_t *b, uint64_t v, int width) {
  char digits[20];
  int n = 0;
  do {
    digits[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v > 0);
  buf_reserve(b, (size_t)(n > width ? n : width));
  while (width-- > n) b->data[b->len++] = '0';
  while (n > 0) b->data[b->len++] = digits[--n];
}

static void buf_put_json_escaped(buf_t *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      char esc[2] = {'\\', (char)c};
      buf_put(b, esc, 2);
    } else if (c < 0x20) {
      char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      buf_put(b, esc, 6);
    } else {
      buf_put(b, (const char *)&c, 1);
    }
  }
}

// --- Unsigned big integers --------------------------------------------------------------------

#define LIMB_BASE 1000000000u
#define LIMB_DIGITS 9

// Least significant limb first, no leading zero limbs (zero is one zero limb).
typedef struct {
  uint32_t *limbs;
  size_t len;
} big_t;

static big_t big_with_capacity(size_t cap, uint32_t value) {
  big_t n = {calloc(cap, sizeof(uint32_t)), 1};
  if (!n.limbs) abort();
  n.limbs[0] = value;
  return n;
}

// `digits`: ASCII digits with no leading zeros.
static big_t big_from_decimal(const char *digits, size_t n) {
  big_t big = big_with_capacity((n + LIMB_DIGITS - 1) / LIMB_DIGITS, 0);
  big.len = 0;
  for (size_t end = n; end > 0;) {
    size_t start = end > LIMB_DIGITS ? end - LIMB_DIGITS : 0;
    uint32_t limb = 0;
    for (size_t i = start; i < end; i++) limb = limb * 10 + (uint32_t)(digits[i] - '0');
    big.limbs[big.len++] = limb;
    end = start;
  }
  return big;
}

static bool big_less(const big_t *a, const big_t *b) {
  if (a->len != b->len) return a->len < b->len;
  for (size_t i = a->len; i-- > 0;) {
    if (a->limbs[i] != b->limbs[i]) return a->limbs[i] < b->limbs[i];
  }
  return false;
}

// a += b, for a <= b; a must have room for b->len + 1 limbs.
static void big_add_assign(big_t *a, const big_t *b) {
  uint32_t carry = 0;
  for (size_t i = 0; i < b->len; i++) {
    uint32_t sum = (i < a->len ? a->limbs[i] : 0) + b->limbs[i] + carry;
    carry = sum >= LIMB_BASE;
    a->limbs[i] = carry ? sum - LIMB_BASE : sum;
  }
  a->len = b->len;
  if (carry) a->limbs[a->len++] = carry;
}

static void buf_put_big(buf_t *out, const big_t *n) {
  buf_put_uint(out, n->limbs[n->len - 1], 0);
  for (size_t i = n->len - 1; i-- > 0;) buf_put_uint(out, n->limbs[i], LIMB_DIGITS);
}

// --- The API ----------------------------------------------------------------------------------

static fib_reply_t reply_from(uint16_t status, buf_t *body) {
  return (fib_reply_t){status, status == 405, body->data, body->len};
}

// `{"error": "<message>"}`, the message JSON-escaped.
static fib_reply_t reply_error(uint16_t status, buf_t *message) {
  buf_t body = {0};
  buf_puts(&body, "{\"error\": \"");
  buf_put_json_escaped(&body, message->data, message->len);
  buf_puts(&body, "\"}");
  free(message->data);
  return reply_from(status, &body);
}

static fib_reply_t reply_error_str(uint16_t status, const char *message) {
  buf_t m = {0};
  buf_puts(&m, message);
  return reply_error(status, &m);
}

// The reply for `GET /<segment>`.
static fib_reply_t reply_sequence(const char *s, size_t len) {
  size_t sign = len > 0 && (s[0] == '-' || s[0] == '+');
  bool negative = sign && s[0] == '-';
  const char *digits = s + sign;
  size_t n_digits = len - sign;

  if (n_digits == 0) {
    buf_t m = {0};
    buf_puts(&m, "`");
    buf_put(&m, s, len);
    buf_puts(&m, "` is not an integer: expected digits after the sign");
    return reply_error(400, &m);
  }
  for (size_t i = 0; i < n_digits; i++) {
    unsigned char c = (unsigned char)digits[i];
    if (c >= '0' && c <= '9') continue;
    buf_t m = {0};
    buf_puts(&m, "`");
    buf_put(&m, s, len);
    buf_puts(&m, "` is not an integer: unexpected ");
    if (c >= 0x21 && c <= 0x7e) {
      char shown[3] = {'\'', (char)c, '\''};
      buf_put(&m, shown, 3);
    } else {
      static const char hex[] = "0123456789abcdef";
      char shown[9] = {'b', 'y', 't', 'e', ' ', '0', 'x', hex[c >> 4], hex[c & 15]};
      buf_put(&m, shown, 9);
    }
    buf_puts(&m, " at position ");
    buf_put_uint(&m, sign + i + 1, 0);
    buf_puts(&m, "; expected an optional sign followed by ASCII digits");
    return reply_error(400, &m);
  }
  if (n_digits > FIB_MAX_DIGITS) {
    buf_t m = {0};
    buf_puts(&m, "the number has ");
    buf_put_uint(&m, n_digits, 0);
    buf_puts(&m, " digits; the limit is ");
    buf_put_uint(&m, FIB_MAX_DIGITS, 0);
    return reply_error(400, &m);
  }

  while (n_digits > 0 && digits[0] == '0') digits++, n_digits--;
  buf_t out = {0};
  buf_puts(&out, "[0, 1");
  if (!negative && n_digits > 0) {
    big_t n = big_from_decimal(digits, n_digits);
    // The last element is below 2n, so n's length plus one limb holds every element.
    big_t a = big_with_capacity(n.len + 1, 0), b = big_with_capacity(n.len + 1, 1);
    // About 4.8 elements per digit of n, of half n's length on average: reserve it at once.
    buf_reserve(&out, n_digits * n_digits * 5 / 2 + 64);
    while (big_less(&b, &n)) {
      big_add_assign(&a, &b);
      big_t t = a;
      a = b;
      b = t;
      buf_puts(&out, ", ");
      buf_put_big(&out, &b);
    }
    free(n.limbs);
    free(a.limbs);
    free(b.limbs);
  }
  buf_puts(&out, "]");
  return reply_from(200, &out);
}

fib_reply_t fib_respond(const char *method, size_t method_len, const char *target, size_t target_len) {
  bool get = method_len == 3 && memcmp(method, "GET", 3) == 0;
  bool head = method_len == 4 && memcmp(method, "HEAD", 4) == 0;
  if (!get && !head) {
    buf_t m = {0};
    buf_puts(&m, "method ");
    buf_put(&m, method, method_len);
    buf_puts(&m, " is not allowed; use GET or HEAD");
    return reply_error(405, &m);
  }
  const char *query = memchr(target, '?', target_len);
  size_t path_len = query ? (size_t)(query - target) : target_len;
  if (path_len < 2 || target[0] != '/' || memchr(target + 1, '/', path_len - 1)) {
    return reply_error_str(404, "not found; use GET /<n>, for example /9000");
  }
  return reply_sequence(target + 1, path_len - 1);
}

void fib_reply_free(fib_reply_t *reply) {
  free(reply->body);
  reply->body = NULL;
  reply->body_len = 0;
}
