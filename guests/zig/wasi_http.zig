//! wasi_http.zig: makes a Zig program a wasi:http/proxy guest. Copy or `@import` this one file,
//! write a handler and export it:
//!
//!     const http = @import("wasi_http.zig");
//!     comptime { http.exportHandler(handle); }
//!     fn handle(w: *http.Response, r: *http.Request) !void {
//!         try w.addHeader("content-type", "text/plain");
//!         try w.write("hello from Zig\n");
//!     }
//!
//! Build freestanding (no libc, no adapter), then wrap into a component (guests/README.md, "Zig"):
//!     zig build-exe -target wasm32-freestanding -fno-entry -rdynamic -O ReleaseSmall app.zig
//!
//! The imports are bound by hand: their names and signatures are those `wasm-tools component
//! embed --dummy-names legacy <wit> --world fibhost:guest/http-guest` prints, their result
//! layouts those of the canonical ABI. Everything a request allocates, the host's results
//! included (cabi_realloc), comes from one arena that is reset after the request, so an
//! instance serving a million requests does not grow.
const std = @import("std");

const Allocator = std.mem.Allocator;

// --- imports -------------------------------------------------------------------------------

extern "wasi:http/types@0.2.12" fn @"[method]incoming-request.method"(self: u32, ret: [*]u8) void;
extern "wasi:http/types@0.2.12" fn @"[method]incoming-request.path-with-query"(self: u32, ret: [*]u8) void;
extern "wasi:http/types@0.2.12" fn @"[method]incoming-request.headers"(self: u32) u32;
extern "wasi:http/types@0.2.12" fn @"[method]incoming-request.consume"(self: u32, ret: [*]u8) void;
extern "wasi:http/types@0.2.12" fn @"[resource-drop]incoming-request"(self: u32) void;
extern "wasi:http/types@0.2.12" fn @"[method]fields.entries"(self: u32, ret: [*]u8) void;
extern "wasi:http/types@0.2.12" fn @"[static]fields.from-list"(ptr: [*]const FieldAbi, len: usize, ret: [*]u8) void;
extern "wasi:http/types@0.2.12" fn @"[resource-drop]fields"(self: u32) void;
extern "wasi:http/types@0.2.12" fn @"[method]incoming-body.stream"(self: u32, ret: [*]u8) void;
extern "wasi:http/types@0.2.12" fn @"[resource-drop]incoming-body"(self: u32) void;
extern "wasi:http/types@0.2.12" fn @"[constructor]outgoing-response"(headers: u32) u32;
extern "wasi:http/types@0.2.12" fn @"[method]outgoing-response.set-status-code"(self: u32, status: u32) u32;
extern "wasi:http/types@0.2.12" fn @"[method]outgoing-response.body"(self: u32, ret: [*]u8) void;
extern "wasi:http/types@0.2.12" fn @"[method]outgoing-body.write"(self: u32, ret: [*]u8) void;
extern "wasi:http/types@0.2.12" fn @"[static]outgoing-body.finish"(self: u32, has_trailers: u32, trailers: u32, ret: [*]u8) void;
// result<own<outgoing-response>, error-code>, flattened: the tag, then the payload slots.
extern "wasi:http/types@0.2.12" fn @"[static]response-outparam.set"(param: u32, tag: u32, p0: u32, p1: u32, p2: u64, p3: u32, p4: u32, p5: u32, p6: u32) void;
extern "wasi:io/streams@0.2.12" fn @"[method]input-stream.blocking-read"(self: u32, len: u64, ret: [*]u8) void;
extern "wasi:io/streams@0.2.12" fn @"[resource-drop]input-stream"(self: u32) void;
extern "wasi:io/streams@0.2.12" fn @"[method]output-stream.blocking-write-and-flush"(self: u32, ptr: [*]const u8, len: usize, ret: [*]u8) void;
extern "wasi:io/streams@0.2.12" fn @"[resource-drop]output-stream"(self: u32) void;
extern "wasi:io/error@0.2.12" fn @"[resource-drop]error"(self: u32) void;
extern "wasi:cli/stderr@0.2.12" fn @"get-stderr"() u32;

/// An element of list<tuple<string, list<u8>>> in the canonical ABI.
const FieldAbi = extern struct { name: [*]const u8, name_len: usize, value: [*]const u8, value_len: usize };

/// The return area of the imports that return through memory: 8-aligned, large enough for
/// result<_, error-code> (40 bytes).
var ret: [64]u8 align(8) = undefined;

fn retU8(off: usize) u8 {
    return ret[off];
}
fn retU32(off: usize) u32 {
    return std.mem.readInt(u32, ret[off..][0..4], .little);
}
fn retBytes(off: usize) []const u8 {
    const len = retU32(off + 4);
    if (len == 0) return "";
    return @as([*]const u8, @ptrFromInt(retU32(off)))[0..len];
}

/// The address of a list for the host. The host checks alignment and bounds even for an empty
/// list, and Zig's empty slices may point anywhere.
fn listPtr(comptime T: type, items: []const T) [*]const T {
    return if (items.len > 0) items.ptr else @ptrFromInt(@alignOf(T));
}

// --- memory --------------------------------------------------------------------------------

var arena_state = std.heap.ArenaAllocator.init(std.heap.wasm_allocator);

/// Memory that lives until the end of the current request.
fn arena() Allocator {
    return arena_state.allocator();
}

fn cabiRealloc(old: ?[*]u8, old_size: usize, alignment: usize, new_size: usize) callconv(.c) ?[*]u8 {
    if (new_size == 0) return @ptrFromInt(alignment);
    const p = arena().rawAlloc(new_size, std.mem.Alignment.fromByteUnits(alignment), @returnAddress()) orelse @trap(); // null (0) would be an in-bounds address to the host
    if (old) |o| @memcpy(p[0..@min(old_size, new_size)], o[0..@min(old_size, new_size)]);
    return p;
}

// --- the API -------------------------------------------------------------------------------

/// One header (names arrive in lower case) or trailer.
pub const Field = struct { name: []const u8, value: []const u8 };

/// The incoming request; valid during the handler call.
pub const Request = struct {
    handle: u32,
    /// As sent, e.g. "GET".
    method: []const u8,
    /// The request target, e.g. "/items/5?verbose=1" ("" if the request had none).
    path_with_query: []const u8,
    /// Memory for the handler, freed when the request ends.
    arena: Allocator,
    body_read: bool = false,

    /// `path_with_query` up to the first '?'.
    pub fn path(r: *const Request) []const u8 {
        return if (std.mem.cutScalar(u8, r.path_with_query, '?')) |parts| parts[0] else r.path_with_query;
    }

    /// The raw query string after the first '?' ("" if none).
    pub fn query(r: *const Request) []const u8 {
        return if (std.mem.cutScalar(u8, r.path_with_query, '?')) |parts| parts[1] else "";
    }

    /// Every request header in the order received.
    pub fn headers(r: *const Request) error{OutOfMemory}![]const Field {
        const fields = @"[method]incoming-request.headers"(r.handle);
        defer @"[resource-drop]fields"(fields);
        @"[method]fields.entries"(fields, &ret);
        const len = retU32(4);
        if (len == 0) return &.{};
        const entries = @as([*]const FieldAbi, @ptrFromInt(retU32(0)))[0..len];
        const out = try r.arena.alloc(Field, len);
        for (entries, out) |e, *f| f.* = .{ .name = e.name[0..e.name_len], .value = e.value[0..e.value_len] };
        return out;
    }

    /// The first value of header `name` (case-insensitive), or null.
    pub fn header(r: *const Request, name: []const u8) error{OutOfMemory}!?[]const u8 {
        for (try r.headers()) |f| if (std.ascii.eqlIgnoreCase(f.name, name)) return f.value;
        return null;
    }

    /// Reads the whole body (once). fibhost caps bodies with max-body-size.
    pub fn body(r: *Request) error{ BodyUnavailable, OutOfMemory }![]const u8 {
        if (r.body_read) return error.BodyUnavailable;
        r.body_read = true;
        @"[method]incoming-request.consume"(r.handle, &ret);
        if (retU8(0) != 0) return error.BodyUnavailable;
        const incoming = retU32(4);
        defer @"[resource-drop]incoming-body"(incoming);
        @"[method]incoming-body.stream"(incoming, &ret);
        if (retU8(0) != 0) return error.BodyUnavailable;
        const stream = retU32(4);
        defer @"[resource-drop]input-stream"(stream);
        var out: std.ArrayList(u8) = .empty;
        while (true) {
            @"[method]input-stream.blocking-read"(stream, 64 << 10, &ret);
            if (retU8(0) == 0) {
                // The first chunk needs no copy; later ones are appended.
                const chunk = retBytes(4);
                if (out.items.len == 0 and out.capacity == 0) {
                    out.items = @constCast(chunk);
                    out.capacity = chunk.len;
                } else try out.appendSlice(r.arena, chunk);
                continue;
            }
            if (retU8(4) == 0) { // last-operation-failed
                @"[resource-drop]error"(retU32(8));
                return error.BodyUnavailable;
            }
            return out.items; // closed: the end of the body
        }
    }
};

/// The response. Headers added before writeHeader (or the first write) are sent with it.
/// For HEAD requests nothing written is sent: set content-length so that HEAD reports it.
pub const Response = struct {
    head: bool,
    outparam: u32,
    arena: Allocator,
    headers: std.ArrayList(Field) = .empty,
    sent: bool = false,
    body: u32 = 0,
    stream: u32 = 0,

    pub fn addHeader(w: *Response, name: []const u8, value: []const u8) error{OutOfMemory}!void {
        try w.headers.append(w.arena, .{ .name = name, .value = value });
    }

    /// Sends the status and the headers (at most once). An invalid header turns the response
    /// into a 500 without headers or body, an invalid status into a 500; each with a line in
    /// the log.
    pub fn writeHeader(w: *Response, status: u16) void {
        if (w.sent) return;
        w.sent = true;
        var code = status;
        var fields: u32 = 0; // 0 is never a valid handle
        if (w.arena.alloc(FieldAbi, w.headers.items.len)) |list| {
            for (w.headers.items, list) |f, *e| e.* = .{ .name = f.name.ptr, .name_len = f.name.len, .value = f.value.ptr, .value_len = f.value.len };
            @"[static]fields.from-list"(listPtr(FieldAbi, list), list.len, &ret);
            if (retU8(0) == 0) fields = retU32(4);
        } else |_| {}
        if (fields == 0) {
            log("wasi_http: invalid response header; answering 500", .{});
            code = 500;
            w.head = true; // no body either
            @"[static]fields.from-list"(listPtr(FieldAbi, &.{}), 0, &ret);
            fields = retU32(4);
        }
        const response = @"[constructor]outgoing-response"(fields);
        if (code != 200 and @"[method]outgoing-response.set-status-code"(response, code) != 0) {
            log("wasi_http: invalid status {d}; answering 500", .{code});
            _ = @"[method]outgoing-response.set-status-code"(response, 500);
        }
        if (!w.head) {
            @"[method]outgoing-response.body"(response, &ret);
            w.body = retU32(4);
        }
        @"[static]response-outparam.set"(w.outparam, 0, response, 0, 0, 0, 0, 0, 0);
        if (w.head) return;
        @"[method]outgoing-body.write"(w.body, &ret);
        if (retU8(0) == 0) w.stream = retU32(4);
    }

    /// Sends bytes of the body (writeHeader(200) first if needed), 4 KiB per host call.
    pub fn write(w: *Response, bytes: []const u8) error{Closed}!void {
        if (!w.sent) w.writeHeader(200);
        if (w.head) return;
        var rest = bytes;
        while (rest.len > 0) {
            if (w.stream == 0) return error.Closed;
            const n = @min(rest.len, 4096);
            @"[method]output-stream.blocking-write-and-flush"(w.stream, rest.ptr, n, &ret);
            if (retU8(0) != 0) {
                if (retU8(4) == 0) @"[resource-drop]error"(retU32(8));
                @"[resource-drop]output-stream"(w.stream);
                w.stream = 0;
                return error.Closed;
            }
            rest = rest[n..];
        }
    }

    /// write() of formatted text.
    pub fn print(w: *Response, comptime fmt: []const u8, args: anytype) error{ Closed, OutOfMemory }!void {
        try w.write(try std.fmt.allocPrint(w.arena, fmt, args));
    }

    fn finish(w: *Response) void {
        if (!w.sent) w.writeHeader(200);
        if (w.head) return;
        if (w.stream != 0) @"[resource-drop]output-stream"(w.stream);
        // An error (e.g. fewer bytes than content-length) is the host's to report.
        @"[static]outgoing-body.finish"(w.body, 0, 0, &ret);
    }
};

/// Writes one line to stderr, which fibhost puts in its log (tagged with route and worker).
pub fn log(comptime fmt: []const u8, args: anytype) void {
    const line = std.fmt.allocPrint(arena(), fmt ++ "\n", args) catch return;
    const stream = @"get-stderr"();
    defer @"[resource-drop]output-stream"(stream);
    var rest = line;
    while (rest.len > 0) {
        const n = @min(rest.len, 4096);
        @"[method]output-stream.blocking-write-and-flush"(stream, rest.ptr, n, &ret);
        if (retU8(0) != 0) {
            if (retU8(4) == 0) @"[resource-drop]error"(retU32(8));
            return;
        }
        rest = rest[n..];
    }
}

const method_names = [_][]const u8{ "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH" };

/// Exports `handler` as wasi:http/incoming-handler@0.2.12#handle, and cabi_realloc. Call it in
/// a `comptime` block of the root file. An error returned by the handler is logged; if the
/// headers were not sent yet the client gets an empty 500.
pub fn exportHandler(comptime handler: fn (*Response, *Request) anyerror!void) void {
    const S = struct {
        fn handle(request: u32, outparam: u32) callconv(.c) void {
            serve(handler, request, outparam);
        }
    };
    @export(&S.handle, .{ .name = "wasi:http/incoming-handler@0.2.12#handle" });
    @export(&cabiRealloc, .{ .name = "cabi_realloc" });
}

fn serve(comptime handler: fn (*Response, *Request) anyerror!void, request: u32, outparam: u32) void {
    // Keep up to 4 MiB of the arena for the next request; give back what a large one took.
    defer _ = arena_state.reset(.{ .retain_with_limit = 4 << 20 });
    @"[method]incoming-request.method"(request, &ret);
    const method = if (retU8(0) < method_names.len) method_names[retU8(0)] else retBytes(4);
    @"[method]incoming-request.path-with-query"(request, ret[16..].ptr);
    const path_with_query = if (retU8(16) != 0) retBytes(20) else "";
    var r: Request = .{ .handle = request, .method = method, .path_with_query = path_with_query, .arena = arena() };
    var w: Response = .{ .head = std.mem.eql(u8, method, "HEAD"), .outparam = outparam, .arena = arena() };
    handler(&w, &r) catch |err| {
        log("handler failed: {s}", .{@errorName(err)});
        if (!w.sent) {
            w.headers.clearRetainingCapacity();
            w.writeHeader(500);
        }
    };
    w.finish();
    @"[resource-drop]incoming-request"(request);
}
