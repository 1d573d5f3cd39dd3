// {{name}}: a JSON API as a wasi:http guest for fibhost.
//
//   - GET /hello?name=Ada → {"message":"Hello, Ada!"} (name percent-decoded, default "world")
//   - POST /echo with a JSON body → {"received":<the body as sent>}
//   - HEAD of /hello → GET's headers; other methods → 405 with Allow; other paths → 404;
//     a bad query or body → 400. Every error is {"error":"..."}.
package main

import (
	"bytes"
	"encoding/json"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"fibhost/wasihttp"
)

// httpError is answered as {"error": message} with its status.
type httpError struct {
	status  int
	message string
	allow   string
}

// A c-shared module runs package initialisers when it is instantiated and never calls main:
// register the handler here.
func init() {
	wasihttp.Handle(func(w *wasihttp.ResponseWriter, r *wasihttp.Request) {
		status := 200
		body, err := route(r)
		if err != nil {
			status, body = err.status, toJSON(map[string]string{"error": err.message})
			if err.allow != "" {
				w.AddHeader("allow", err.allow)
			}
		}
		w.AddHeader("content-type", "application/json")
		w.AddHeader("content-length", strconv.Itoa(len(body)))
		w.WriteHeader(status)
		w.Write(body) // nothing is sent for HEAD; fails only when the client has gone away
	})
}

func route(r *wasihttp.Request) ([]byte, *httpError) {
	switch r.Path() {
	case "/hello":
		if r.Method() != "GET" && r.Method() != "HEAD" {
			return nil, &httpError{405, "method not allowed; allowed: GET, HEAD", "GET, HEAD"}
		}
		return hello(r.Query())
	case "/echo":
		if r.Method() != "POST" {
			return nil, &httpError{405, "method not allowed; allowed: POST", "POST"}
		}
		return echo(r)
	}
	return nil, &httpError{404, "not found; try GET /hello?name=you or POST /echo", ""}
}

// hello answers GET /hello?name=...
func hello(query string) ([]byte, *httpError) {
	name := ""
	for _, pair := range strings.Split(query, "&") {
		key, value, _ := strings.Cut(pair, "=")
		if key != "name" {
			continue
		}
		decoded, err := url.QueryUnescape(value) // '+' is a space
		if err != nil || !utf8.ValidString(decoded) {
			return nil, &httpError{400, "`name` is not valid percent-encoded UTF-8", ""}
		}
		name = decoded
		break
	}
	if name == "" {
		name = "world"
	}
	return toJSON(map[string]string{"message": "Hello, " + name + "!"}), nil
}

// echo answers POST /echo: the body, checked to be JSON, sent back as it came.
func echo(r *wasihttp.Request) ([]byte, *httpError) {
	body, err := r.Body() // read in chunks to its end (fibhost caps its size)
	if err != nil {
		return nil, &httpError{400, "the request body could not be read", ""}
	}
	if !utf8.Valid(body) || !json.Valid(body) {
		return nil, &httpError{400, "the body is not valid JSON", ""}
	}
	body = bytes.Trim(body, " \t\r\n")
	return append(append([]byte(`{"received":`), body...), '}'), nil
}

// toJSON writes v compactly, without escaping <, > and & (this is not HTML).
func toJSON(v any) []byte {
	var out bytes.Buffer
	encoder := json.NewEncoder(&out)
	encoder.SetEscapeHTML(false)
	encoder.Encode(v) // cannot fail for a map of strings
	return bytes.TrimSuffix(out.Bytes(), []byte("\n"))
}

func main() {}
