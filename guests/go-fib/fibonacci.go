package main

import (
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// The API of crates/fibonacci/src/lib.rs, message for message.
const (
	maxDigits      = 1024
	allowedMethods = "GET, HEAD"
	contentType    = "application/json"
	notFound       = "not found; use GET /<n>, for example /9000"
)

// respond answers one request: the status, the JSON body (for HEAD, the body GET would send)
// and whether the response carries Allow.
func respond(method, pathWithQuery string) (int, []byte, bool) {
	if method != "GET" && method != "HEAD" {
		return 405, errorBody("method " + method + " is not allowed; use GET or HEAD"), true
	}
	path, _, _ := strings.Cut(pathWithQuery, "?")
	segment, ok := strings.CutPrefix(path, "/")
	if !ok || segment == "" || strings.Contains(segment, "/") {
		return 404, errorBody(notFound), false
	}
	body, err := sequence(segment)
	if err != "" {
		return 400, errorBody(err), false
	}
	return 200, body, false
}

// sequence is the JSON array for the segment, or the reason it is not a number.
func sequence(s string) ([]byte, string) {
	digits, negative := s, false
	if len(s) > 0 && (s[0] == '-' || s[0] == '+') {
		digits, negative = s[1:], s[0] == '-'
	}
	offset := len(s) - len(digits)
	if digits == "" {
		return nil, "`" + s + "` is not an integer: expected digits after the sign"
	}
	for i := 0; i < len(digits); i++ {
		if b := digits[i]; b < '0' || b > '9' {
			shown := fmt.Sprintf("byte 0x%02x", b)
			if b >= 0x21 && b <= 0x7e {
				shown = "'" + string(rune(b)) + "'"
			}
			return nil, fmt.Sprintf("`%s` is not an integer: unexpected %s at position %d; "+
				"expected an optional sign followed by ASCII digits", s, shown, offset+i+1)
		}
	}
	if len(digits) > maxDigits {
		return nil, fmt.Sprintf("the number has %d digits; the limit is %d", len(digits), maxDigits)
	}
	significant := strings.TrimLeft(digits, "0")
	if negative || significant == "" || significant == "1" {
		return []byte("[0, 1]"), ""
	}
	out := append(make([]byte, 0, 256), "[0, 1"...)
	if len(significant) <= 19 {
		// Below 10^19 the sequence stops at or before fib(93), the largest Fibonacci number
		// of uint64.
		n, _ := strconv.ParseUint(significant, 10, 64)
		for a, b := uint64(0), uint64(1); b < n; {
			a, b = b, a+b
			out = append(out, ", "...)
			out = strconv.AppendUint(out, b, 10)
		}
		return append(out, ']'), ""
	}
	n, _ := new(big.Int).SetString(significant, 10)
	out = append(make([]byte, 0, len(significant)*len(significant)*5/2), "[0, 1"...)
	a, b := big.NewInt(0), big.NewInt(1)
	for b.Cmp(n) < 0 {
		a.Add(a, b)
		a, b = b, a
		out = append(out, ", "...)
		out = b.Append(out, 10)
	}
	return append(out, ']'), ""
}

// errorBody is {"error": "<message>"} with the message escaped as a JSON string.
func errorBody(message string) []byte {
	out := append(make([]byte, 0, len(message)+16), `{"error": "`...)
	for i := 0; i < len(message); i++ {
		switch c := message[i]; {
		case c == '"':
			out = append(out, `\"`...)
		case c == '\\':
			out = append(out, `\\`...)
		case c < 0x20:
			out = fmt.Appendf(out, `\u%04x`, c)
		default:
			out = append(out, c)
		}
	}
	return append(out, `"}`...)
}
