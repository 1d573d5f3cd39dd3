//! The Fibonacci API (crates/fibonacci) as a wasi:http guest in Zig: the same bytes, status
//! codes and headers as the Rust guest.
const std = @import("std");
const http = @import("wasi_http");

comptime {
    http.exportHandler(handle);
}

const max_digits = 1024;
const not_found = "not found; use GET /<n>, for example /9000";

fn handle(w: *http.Response, r: *http.Request) !void {
    const a = r.arena;
    var status: u16 = 200;
    var body: []const u8 = undefined;
    const allowed = std.mem.eql(u8, r.method, "GET") or std.mem.eql(u8, r.method, "HEAD");
    if (!allowed) {
        status = 405;
        body = try errorBody(a, try std.fmt.allocPrint(a, "method {s} is not allowed; use GET or HEAD", .{r.method}));
    } else if (std.mem.cutPrefix(u8, r.path(), "/")) |segment| {
        if (segment.len == 0 or std.mem.indexOfScalar(u8, segment, '/') != null) {
            status = 404;
            body = try errorBody(a, not_found);
        } else switch (try sequence(a, segment)) {
            .ok => |json| body = json,
            .bad => |message| {
                status = 400;
                body = try errorBody(a, message);
            },
        }
    } else {
        status = 404;
        body = try errorBody(a, not_found);
    }
    try w.addHeader("content-type", "application/json");
    try w.addHeader("content-length", try std.fmt.allocPrint(a, "{d}", .{body.len}));
    if (!allowed) try w.addHeader("allow", "GET, HEAD");
    w.writeHeader(status);
    w.write(body) catch {}; // fails only when the client has gone away: nobody left to tell
}

const Answer = union(enum) { ok: []const u8, bad: []const u8 };

/// The JSON array for the path segment, or why it is not a number.
fn sequence(a: std.mem.Allocator, s: []const u8) !Answer {
    var digits = s;
    var negative = false;
    if (s.len > 0 and (s[0] == '-' or s[0] == '+')) {
        negative = s[0] == '-';
        digits = s[1..];
    }
    const offset = s.len - digits.len;
    if (digits.len == 0)
        return .{ .bad = try std.fmt.allocPrint(a, "`{s}` is not an integer: expected digits after the sign", .{s}) };
    for (digits, 0..) |b, i| {
        if (std.ascii.isDigit(b)) continue;
        const shown = if (b >= 0x21 and b <= 0x7e)
            try std.fmt.allocPrint(a, "'{c}'", .{b})
        else
            try std.fmt.allocPrint(a, "byte 0x{x:0>2}", .{b});
        return .{ .bad = try std.fmt.allocPrint(a, "`{s}` is not an integer: unexpected {s} at position {d}; " ++
            "expected an optional sign followed by ASCII digits", .{ s, shown, offset + i + 1 }) };
    }
    if (digits.len > max_digits)
        return .{ .bad = try std.fmt.allocPrint(a, "the number has {d} digits; the limit is {d}", .{ digits.len, max_digits }) };
    const significant = std.mem.trimStart(u8, digits, "0");
    if (negative or significant.len == 0 or std.mem.eql(u8, significant, "1")) return .{ .ok = "[0, 1]" };

    var out: std.ArrayList(u8) = .empty;
    if (significant.len <= 19) {
        // Below 10^19 the sequence stops at or before fib(93), the largest Fibonacci number of u64.
        const n = std.fmt.parseInt(u64, significant, 10) catch unreachable;
        try out.ensureTotalCapacity(a, 256);
        try out.appendSlice(a, "[0, 1");
        var x: u64 = 0;
        var y: u64 = 1;
        var buf: [20]u8 = undefined;
        while (y < n) {
            const next = x + y;
            x = y;
            y = next;
            try out.appendSlice(a, ", ");
            try out.appendSlice(a, buf[0..std.fmt.printInt(&buf, y, 10, .lower, .{})]);
        }
        try out.append(a, ']');
        return .{ .ok = out.items };
    }

    const Managed = std.math.big.int.Managed;
    var n = try Managed.init(a);
    try n.setString(10, significant);
    var x = try Managed.initSet(a, 0);
    var y = try Managed.initSet(a, 1);
    try out.ensureTotalCapacity(a, significant.len * significant.len * 5 / 2);
    try out.appendSlice(a, "[0, 1");
    // Working memory for toString, sized for the largest number printed (at most one limb
    // longer than n).
    const limbs = try a.alloc(std.math.big.Limb, std.math.big.int.calcToStringLimbsBufferLen(n.len() + 1, 10));
    while (y.order(n) == .lt) {
        try x.add(&x, &y);
        x.swap(&y);
        try out.appendSlice(a, ", ");
        const c = y.toConst();
        try out.ensureUnusedCapacity(a, c.sizeInBaseUpperBound(10));
        out.items.len += c.toString(out.unusedCapacitySlice(), 10, .lower, limbs);
    }
    try out.append(a, ']');
    return .{ .ok = out.items };
}

/// {"error": "<message>"} with the message escaped as a JSON string.
fn errorBody(a: std.mem.Allocator, message: []const u8) ![]const u8 {
    var out: std.ArrayList(u8) = .empty;
    try out.appendSlice(a, "{\"error\": \"");
    for (message) |c| switch (c) {
        '"' => try out.appendSlice(a, "\\\""),
        '\\' => try out.appendSlice(a, "\\\\"),
        0...0x1f => try out.print(a, "\\u{x:0>4}", .{c}),
        else => try out.append(a, c),
    };
    try out.appendSlice(a, "\"}");
    return out.items;
}
