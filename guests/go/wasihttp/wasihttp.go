// Package wasihttp makes a Go program a wasi:http/proxy guest: register a handler with Handle
// in an init function, build with GOOS=wasip1 GOARCH=wasm -buildmode=c-shared, and wrap the
// module into a component with the preview1 reactor adapter (guests/README.md, "Go").
//
//	func init() {
//		wasihttp.Handle(func(w *wasihttp.ResponseWriter, r *wasihttp.Request) {
//			w.AddHeader("content-type", "text/plain")
//			w.Write([]byte("hello from Go\n"))
//		})
//	}
//
//	func main() {}
//
// The package exports wasi:http/incoming-handler@0.2.12#handle and cabi_realloc; it binds the
// imports by hand (abi.go), so it needs nothing but the Go toolchain.
package wasihttp

import (
	"errors"
	"runtime"
	"strings"
	"unsafe"
)

// Request is the incoming request. It is valid only during the handler call.
type Request struct {
	handle        uint32
	method        string
	pathWithQuery string
	headers       []Field
	headersRead   bool
	bodyRead      bool
}

// Field is one header (name in lower case, as wasi:http delivers it) or trailer.
type Field struct {
	Name  string
	Value string
}

var methods = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

// Method is the request method as sent, e.g. "GET".
func (r *Request) Method() string { return r.method }

// PathWithQuery is the request target, e.g. "/items/5?verbose=1" ("" if the request had none).
func (r *Request) PathWithQuery() string { return r.pathWithQuery }

// Path is PathWithQuery up to the first '?'.
func (r *Request) Path() string {
	path, _, _ := strings.Cut(r.pathWithQuery, "?")
	return path
}

// Query is the raw query string after the first '?' ("" if none); net/url.ParseQuery parses it.
func (r *Request) Query() string {
	_, query, _ := strings.Cut(r.pathWithQuery, "?")
	return query
}

// Headers returns every request header in the order received.
func (r *Request) Headers() []Field {
	if !r.headersRead {
		r.headersRead = true
		fields := importRequestHeaders(r.handle)
		arenaOn = true
		importFieldsEntries(fields, retPtr())
		arenaOn = false
		ptr, n := retU32(0), retU32(4)
		entries := unsafe.Slice((*[4]uint32)(unsafe.Pointer(uintptr(ptr))), n)
		r.headers = make([]Field, 0, n)
		for _, e := range entries {
			r.headers = append(r.headers, Field{string(hostBytes(e[0], e[1])), string(hostBytes(e[2], e[3]))})
		}
		arenaReset()
		importDropFields(fields)
	}
	return r.headers
}

// Header returns the first value of the header name (case-insensitive), or "".
func (r *Request) Header(name string) string {
	for _, f := range r.Headers() {
		if strings.EqualFold(f.Name, name) {
			return f.Value
		}
	}
	return ""
}

// ErrBody is returned when the request body cannot be read (the client went away, or the body
// was already read).
var ErrBody = errors.New("wasihttp: cannot read the request body")

// Body reads the whole request body. It can be called once. fibhost caps bodies with its
// max-body-size setting, so reading all of it is safe.
func (r *Request) Body() ([]byte, error) {
	if r.bodyRead {
		return nil, ErrBody
	}
	r.bodyRead = true
	importRequestConsume(r.handle, retPtr())
	if retU8(0) != 0 {
		return nil, ErrBody
	}
	body := retU32(4)
	defer importDropIncomingBody(body)
	importIncomingBodyStream(body, retPtr())
	if retU8(0) != 0 {
		return nil, ErrBody
	}
	stream := retU32(4)
	defer importDropInputStream(stream)
	var out []byte
	for {
		arenaOn = true
		importBlockingRead(stream, 64<<10, retPtr())
		arenaOn = false
		if retU8(0) == 0 {
			out = append(out, hostBytes(retU32(4), retU32(8))...)
			arenaReset()
			continue
		}
		arenaReset()
		if retU8(4) == 0 { // last-operation-failed(error)
			importDropError(retU32(8))
			return out, ErrBody
		}
		return out, nil // closed: the end of the body
	}
}

// ResponseWriter sends the response. Headers added before the first Write (or WriteHeader)
// are sent with it; Write buffers up to 4 KiB and sends in 4 KiB host calls. For HEAD
// requests nothing written is sent (set content-length yourself so HEAD reports it).
type ResponseWriter struct {
	head     bool
	status   int
	headers  []Field
	sent     bool
	response uint32
	body     uint32 // outgoing-body, 0 for HEAD
	stream   uint32 // output-stream, 0 when none or failed
	buf      []byte
	outparam uint32
}

// ErrClosed is returned by Write when the client has gone away.
var ErrClosed = errors.New("wasihttp: the response stream is closed")

// AddHeader adds a response header; it has no effect once the headers are sent.
func (w *ResponseWriter) AddHeader(name, value string) {
	w.headers = append(w.headers, Field{name, value})
}

// WriteHeader sends the status and headers. Without it the first Write sends status 200.
// An invalid header name or value turns the response into a 500 without headers or body, an
// invalid status into a 500; each is written to stderr (the server's log).
func (w *ResponseWriter) WriteHeader(status int) {
	if w.sent {
		return
	}
	w.sent = true
	// list<tuple<field-name, field-value>>: four words per entry, pointing into Go strings.
	entries := make([]uint32, 0, 4*len(w.headers))
	for _, f := range w.headers {
		entries = append(entries, addr(unsafe.Pointer(unsafe.StringData(f.Name))), uint32(len(f.Name)),
			addr(unsafe.Pointer(unsafe.StringData(f.Value))), uint32(len(f.Value)))
	}
	var entriesPtr uint32
	if len(entries) > 0 {
		entriesPtr = addr(unsafe.Pointer(&entries[0]))
	}
	importFieldsFromList(entriesPtr, uint32(len(w.headers)), retPtr())
	runtime.KeepAlive(entries)
	runtime.KeepAlive(w.headers)
	var fields uint32
	if retU8(0) == 0 {
		fields = retU32(4)
	} else {
		logf("wasihttp: invalid response header; answering 500")
		status, fields = 500, importFieldsFromListEmpty()
		w.head = true // no body either
	}
	w.response = importNewOutgoingResponse(fields)
	if status != 200 && importSetStatusCode(w.response, uint32(status)) != 0 {
		logf("wasihttp: invalid status code; answering 500")
		importSetStatusCode(w.response, 500)
	}
	w.status = status
	if !w.head {
		importOutgoingResponseBody(w.response, retPtr())
		w.body = retU32(4)
	}
	importResponseOutparamSet(w.outparam, 0, w.response, 0, 0, 0, 0, 0, 0)
	if w.head {
		return
	}
	importOutgoingBodyWrite(w.body, retPtr())
	if retU8(0) == 0 {
		w.stream = retU32(4)
	}
}

func importFieldsFromListEmpty() uint32 {
	importFieldsFromList(0, 0, retPtr())
	return retU32(4)
}

// Write sends p as part of the body (buffered; see ResponseWriter).
func (w *ResponseWriter) Write(p []byte) (int, error) {
	if !w.sent {
		w.WriteHeader(200)
	}
	if w.head {
		return len(p), nil
	}
	if w.stream == 0 {
		return 0, ErrClosed
	}
	n := len(p)
	if len(w.buf) > 0 {
		take := min(4096-len(w.buf), len(p))
		w.buf = append(w.buf, p[:take]...)
		p = p[take:]
		if len(w.buf) < 4096 {
			return n, nil
		}
		if !w.send(w.buf) {
			return 0, ErrClosed
		}
		w.buf = w.buf[:0]
	}
	for len(p) >= 4096 {
		if !w.send(p[:4096]) {
			return 0, ErrClosed
		}
		p = p[4096:]
	}
	w.buf = append(w.buf, p...)
	return n, nil
}

// WriteString is Write for a string, without copying it first.
func (w *ResponseWriter) WriteString(s string) (int, error) {
	return w.Write(unsafe.Slice(unsafe.StringData(s), len(s)))
}

// send writes one chunk of at most 4096 bytes (the most blocking-write-and-flush accepts).
func (w *ResponseWriter) send(p []byte) bool {
	if len(p) == 0 {
		return true
	}
	importBlockingWriteAndFlush(w.stream, addr(unsafe.Pointer(&p[0])), uint32(len(p)), retPtr())
	runtime.KeepAlive(p)
	if retU8(0) == 0 {
		return true
	}
	if retU8(4) == 0 {
		importDropError(retU32(8))
	}
	importDropOutputStream(w.stream)
	w.stream = 0
	return false
}

func (w *ResponseWriter) finish() {
	if !w.sent {
		w.WriteHeader(200)
	}
	if w.head {
		return
	}
	if w.stream != 0 {
		w.send(w.buf)
		w.buf = nil
		if w.stream != 0 {
			importDropOutputStream(w.stream)
		}
	}
	importOutgoingBodyFinish(w.body, 0, 0, retPtr())
	// An error here (e.g. fewer bytes than content-length) is the host's to report; its
	// error-code may carry strings in the arena, which the reset discards.
	arenaReset()
}

var handler func(w *ResponseWriter, r *Request)

// Handle registers the function that serves every request. Call it from an init function.
func Handle(h func(w *ResponseWriter, r *Request)) { handler = h }

//go:wasmexport wasi:http/incoming-handler@0.2.12#handle
func handle(request, outparam uint32) {
	r := &Request{handle: request}
	arenaOn = true
	importRequestMethod(request, retPtr())
	importRequestPathWithQuery(request, retPtr()+16)
	arenaOn = false
	if tag := retU8(0); int(tag) < len(methods) {
		r.method = methods[tag]
	} else {
		r.method = string(hostBytes(retU32(4), retU32(8)))
	}
	if retU8(16) != 0 {
		r.pathWithQuery = string(hostBytes(retU32(20), retU32(24)))
	}
	arenaReset()
	w := &ResponseWriter{head: r.method == "HEAD", outparam: outparam}
	if handler == nil {
		logf("wasihttp: no handler; call wasihttp.Handle in an init function")
		w.WriteHeader(500)
	} else {
		handler(w, r)
	}
	w.finish()
	importDropIncomingRequest(request)
}
