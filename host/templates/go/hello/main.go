// {{name}}: a wasi:http guest for fibhost that greets every request.
package main

import (
	"strconv"

	"fibhost/wasihttp"
)

const greeting = "Hello from Go!\n"

// A c-shared module runs package initialisers when it is instantiated and never calls main:
// register the handler here.
func init() {
	wasihttp.Handle(func(w *wasihttp.ResponseWriter, r *wasihttp.Request) {
		w.AddHeader("content-type", "text/plain")
		w.AddHeader("content-length", strconv.Itoa(len(greeting)))
		w.WriteString(greeting) // nothing is sent for HEAD; fails only when the client has gone away
	})
}

func main() {}
