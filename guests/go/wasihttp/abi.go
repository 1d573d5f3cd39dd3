package wasihttp

// The canonical-ABI layer: the wasi:http 0.2.12 imports this package calls, bound by hand with
// //go:wasmimport, and the cabi_realloc export the host allocates results with. The names and
// signatures are those `wasm-tools component embed --dummy-names legacy <wit> --world
// fibhost:guest/http-guest` prints; the result layouts follow the canonical ABI.

import (
	"unsafe"
	_ "unsafe" // go:linkname
)

//go:wasmimport wasi:http/types@0.2.12 [method]incoming-request.method
func importRequestMethod(self uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]incoming-request.path-with-query
func importRequestPathWithQuery(self uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]incoming-request.headers
func importRequestHeaders(self uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]incoming-request.consume
func importRequestConsume(self uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]incoming-request
func importDropIncomingRequest(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]fields.entries
func importFieldsEntries(self uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [static]fields.from-list
func importFieldsFromList(ptr, len uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]fields
func importDropFields(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]incoming-body.stream
func importIncomingBodyStream(self uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]incoming-body
func importDropIncomingBody(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [constructor]outgoing-response
func importNewOutgoingResponse(headers uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-response.set-status-code
func importSetStatusCode(self uint32, status uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-response.body
func importOutgoingResponseBody(self uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]outgoing-response
func importDropOutgoingResponse(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-body.write
func importOutgoingBodyWrite(self uint32, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [static]outgoing-body.finish
func importOutgoingBodyFinish(self uint32, hasTrailers uint32, trailers uint32, ret uint32)

// result<own<outgoing-response>, error-code>, flattened: the tag, then the payload slots.
//
//go:wasmimport wasi:http/types@0.2.12 [static]response-outparam.set
func importResponseOutparamSet(param, tag, p0, p1 uint32, p2 uint64, p3, p4, p5, p6 uint32)

//go:wasmimport wasi:io/streams@0.2.12 [method]input-stream.blocking-read
func importBlockingRead(self uint32, len uint64, ret uint32)

//go:wasmimport wasi:io/streams@0.2.12 [resource-drop]input-stream
func importDropInputStream(self uint32)

//go:wasmimport wasi:io/streams@0.2.12 [method]output-stream.blocking-write-and-flush
func importBlockingWriteAndFlush(self uint32, ptr, len uint32, ret uint32)

//go:wasmimport wasi:io/streams@0.2.12 [resource-drop]output-stream
func importDropOutputStream(self uint32)

//go:wasmimport wasi:io/error@0.2.12 [resource-drop]error
func importDropError(self uint32)

// ret is the return area of the imports that return through memory: a global, so it never
// moves, aligned to 8 and large enough for result<_, error-code> (40 bytes).
var ret [8]uint64

func retPtr() uint32 { return uint32(uintptr(unsafe.Pointer(&ret))) }

func retU8(off uintptr) uint8   { return *(*uint8)(unsafe.Add(unsafe.Pointer(&ret), off)) }
func retU32(off uintptr) uint32 { return *(*uint32)(unsafe.Add(unsafe.Pointer(&ret), off)) }

func addr(p unsafe.Pointer) uint32 { return uint32(uintptr(p)) }

// hostBytes is memory the host wrote into the call arena: valid until arenaReset.
func hostBytes(ptr, n uint32) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), n)
}

// Memory for cabi_realloc.
//
// The host calls cabi_realloc (1) inside an import call that returns a string or list, to
// place the result, and (2) from the preview1 adapter, once, for the adapter's own state,
// possibly while the Go runtime is still initialising inside _initialize. Neither may use the
// Go heap: (2) runs before the heap exists, and memory grown behind the runtime's back (what
// the adapter does without a cabi_realloc) is later handed out again by the runtime, which
// believes it owns everything above its break. So all of it comes from the runtime's break
// (runtime.sbrk), which the runtime then steps over; until the runtime has set its break
// (runtime.bloc == 0), from a static buffer. (With Go 1.27 the adapter's first call was seen
// to come after the break is set, inside _initialize; the buffer is a safety net.)
//
// (1) is a per-call arena: the glue copies every result into Go memory right after the call
// and resets the arena, so an instance serving a million requests does not grow.

//go:linkname runtimeSbrk runtime.sbrk
func runtimeSbrk(n uintptr) unsafe.Pointer

//go:linkname runtimeBloc runtime.bloc
var runtimeBloc uintptr

var (
	early                         [16 << 10]uint64 // 128 KiB for allocations before the runtime's break exists
	earlyUsed                     uintptr
	permPos, permEnd              uintptr // the current chunk of permanent allocations
	arenaOn                       bool    // set around import calls: allocate from the arena
	arenaBase, arenaPos, arenaEnd uintptr
)

const chunk = 64 << 10 // the wasm page: runtime.sbrk rounds every request up to it

func alignUp(p, a uintptr) uintptr { return (p + a - 1) &^ (a - 1) }

//go:nosplit
func sbrkChunk(n uintptr) uintptr {
	if runtimeBloc == 0 {
		base := uintptr(unsafe.Pointer(&early))
		if earlyUsed+n > uintptr(len(early))*8 {
			return 0
		}
		p := base + earlyUsed
		earlyUsed += n
		return p
	}
	return uintptr(runtimeSbrk(n))
}

//go:nosplit
func permAlloc(size, align uintptr) uintptr {
	p := alignUp(permPos, align)
	if permPos == 0 || p+size > permEnd {
		n := alignUp(size+align, chunk)
		base := sbrkChunk(n)
		if base == 0 {
			return 0
		}
		permPos, permEnd = base, base+n
		p = alignUp(permPos, align)
	}
	permPos = p + size
	return p
}

//go:nosplit
func arenaAlloc(size, align uintptr) uintptr {
	p := alignUp(arenaPos, align)
	if arenaBase == 0 || p+size > arenaEnd {
		// A new, larger arena; the old one is abandoned (this happens a few times at most,
		// each time at least doubling).
		n := alignUp(max(size+align, 2*(arenaEnd-arenaBase), chunk), chunk)
		base := sbrkChunk(n)
		if base == 0 {
			return 0
		}
		arenaBase, arenaEnd = base, base+n
		p = alignUp(base, align)
	}
	arenaPos = p + size
	return p
}

func arenaReset() { arenaPos = arenaBase }

//go:wasmexport cabi_realloc
//go:nosplit
func cabiRealloc(oldPtr, oldSize, align, newSize uint32) uint32 {
	if newSize == 0 {
		return align
	}
	var p uintptr
	if arenaOn {
		p = arenaAlloc(uintptr(newSize), uintptr(align))
	} else {
		p = permAlloc(uintptr(newSize), uintptr(align))
	}
	if p == 0 {
		// Out of memory. 0 would not do: it is an aligned, in-bounds address to the host,
		// which would write the data there. An address past any 32-bit memory is refused by
		// the host, and the call traps.
		return ^uint32(0)
	}
	if oldPtr != 0 && oldSize != 0 {
		n := min(oldSize, newSize)
		copy(unsafe.Slice((*byte)(unsafe.Pointer(p)), n), unsafe.Slice((*byte)(unsafe.Pointer(uintptr(oldPtr))), n))
	}
	return uint32(p)
}
