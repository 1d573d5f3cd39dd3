//! {{name}}: a wasi:http guest for fibhost that greets every request.
const std = @import("std");
const http = @import("wasi_http");

comptime {
    http.exportHandler(handle);
}

const greeting = "Hello from Zig!\n";

fn handle(w: *http.Response, r: *http.Request) !void {
    _ = r;
    try w.addHeader("content-type", "text/plain");
    try w.addHeader("content-length", std.fmt.comptimePrint("{d}", .{greeting.len}));
    w.write(greeting) catch {}; // nothing is sent for HEAD; fails only when the client has gone away
}
