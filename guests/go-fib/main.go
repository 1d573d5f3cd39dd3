// The Fibonacci API (crates/fibonacci) as a wasi:http guest in Go: the same bytes, status
// codes and headers as the Rust guest.
package main

import (
	"strconv"

	"fibhost/wasihttp"
)

func init() {
	wasihttp.Handle(func(w *wasihttp.ResponseWriter, r *wasihttp.Request) {
		status, body, allow := respond(r.Method(), r.PathWithQuery())
		w.AddHeader("content-type", contentType)
		w.AddHeader("content-length", strconv.Itoa(len(body)))
		if allow {
			w.AddHeader("allow", allowedMethods)
		}
		w.WriteHeader(status)
		w.Write(body) // fails only when the client has gone away: nobody left to tell
	})
}

// A reactor: the host calls the handler; main never runs.
func main() {}
