//! {{name}}: a JSON API as a wasi:http guest for fibhost.
//!
//! - `GET /hello?name=Ada` → `{"message":"Hello, Ada!"}` (name percent-decoded, default "world")
//! - `POST /echo` with a JSON body → `{"received":<the body as sent>}`
//! - HEAD of `/hello` → GET's headers; other methods → 405 with `Allow`; other paths → 404;
//!   a bad query or body → 400. Every error is `{"error":"..."}`.
const std = @import("std");
const http = @import("wasi_http");

comptime {
    http.exportHandler(handle);
}

/// A response: status, JSON body and, for 405, the allowed methods.
const Reply = struct {
    status: u16 = 200,
    body: []const u8,
    allow: ?[]const u8 = null,

    fn err(a: std.mem.Allocator, status: u16, message: []const u8) !Reply {
        return .{ .status = status, .body = try toJson(a, .{ .@"error" = message }) };
    }
};

fn handle(w: *http.Response, r: *http.Request) !void {
    const reply = try route(r);
    try w.addHeader("content-type", "application/json");
    try w.addHeader("content-length", try std.fmt.allocPrint(r.arena, "{d}", .{reply.body.len}));
    if (reply.allow) |allow| try w.addHeader("allow", allow);
    w.writeHeader(reply.status);
    w.write(reply.body) catch {}; // nothing is sent for HEAD; fails only when the client has gone away
}

fn route(r: *http.Request) !Reply {
    const a = r.arena;
    const method = r.method;
    if (std.mem.eql(u8, r.path(), "/hello")) {
        if (!std.mem.eql(u8, method, "GET") and !std.mem.eql(u8, method, "HEAD")) {
            var reply = try Reply.err(a, 405, "method not allowed; allowed: GET, HEAD");
            reply.allow = "GET, HEAD";
            return reply;
        }
        return hello(a, r.query());
    }
    if (std.mem.eql(u8, r.path(), "/echo")) {
        if (!std.mem.eql(u8, method, "POST")) {
            var reply = try Reply.err(a, 405, "method not allowed; allowed: POST");
            reply.allow = "POST";
            return reply;
        }
        // Read in chunks to its end (fibhost caps its size).
        const body = r.body() catch |e| switch (e) {
            error.BodyUnavailable => return Reply.err(a, 400, "the request body could not be read"),
            else => return e,
        };
        return echo(a, body);
    }
    return Reply.err(a, 404, "not found; try GET /hello?name=you or POST /echo");
}

/// `GET /hello?name=...`
fn hello(a: std.mem.Allocator, query: []const u8) !Reply {
    var name: []const u8 = "";
    var pairs = std.mem.splitScalar(u8, query, '&');
    while (pairs.next()) |pair| {
        const key, const value = std.mem.cutScalar(u8, pair, '=') orelse .{ pair, "" };
        if (!std.mem.eql(u8, key, "name")) continue;
        name = try percentDecode(a, value) orelse
            return Reply.err(a, 400, "`name` is not valid percent-encoded UTF-8");
        break;
    }
    if (name.len == 0) name = "world";
    const message = try std.fmt.allocPrint(a, "Hello, {s}!", .{name});
    return .{ .body = try toJson(a, .{ .message = message }) };
}

/// `POST /echo`: the body, checked to be JSON, sent back as it came.
fn echo(a: std.mem.Allocator, body: []const u8) !Reply {
    if (!std.unicode.utf8ValidateSlice(body) or !try std.json.validate(a, body))
        return Reply.err(a, 400, "the body is not valid JSON");
    const trimmed = std.mem.trim(u8, body, " \t\r\n");
    return .{ .body = try std.mem.concat(a, u8, &.{ "{\"received\":", trimmed, "}" }) };
}

/// `+` is a space and `%XX` the byte XX; null when an escape is malformed or the bytes are
/// not UTF-8.
fn percentDecode(a: std.mem.Allocator, value: []const u8) !?[]const u8 {
    var out: std.ArrayList(u8) = .empty;
    var i: usize = 0;
    while (i < value.len) : (i += 1) {
        switch (value[i]) {
            '+' => try out.append(a, ' '),
            '%' => {
                if (i + 2 >= value.len or !std.ascii.isHex(value[i + 1]) or !std.ascii.isHex(value[i + 2]))
                    return null;
                try out.append(a, std.fmt.parseInt(u8, value[i + 1 .. i + 3], 16) catch unreachable);
                i += 2;
            },
            else => |c| try out.append(a, c),
        }
    }
    if (!std.unicode.utf8ValidateSlice(out.items)) return null;
    return out.items;
}

fn toJson(a: std.mem.Allocator, value: anytype) ![]const u8 {
    return std.fmt.allocPrint(a, "{f}", .{std.json.fmt(value, .{})});
}
