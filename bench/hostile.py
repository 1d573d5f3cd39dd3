#!/usr/bin/env python3
"""The hostile-client row: good requests while hostile connections are held open.

    bench/hostile.py FIBHOST GUEST [--seconds N] [--hostile N] [--out FILE]

Starts FIBHOST serving GUEST (the fib guest) on loopback with 4 workers, opens N silent
connections (no byte sent), N slow readers (a large response requested, never read) and N
zero-window readers (the same with a 1-byte receive buffer), then sends good requests
(`GET /9000`, one at a time on fresh connections, from 4 threads) for the given seconds and
reports how many were answered 200 with the right body. fibhost's `max-connections` is left
at its default; its header-read, send and keep-alive timeouts decide what the hostile
connections hold. Everything is on 127.0.0.1 and bounded in time.
"""

import argparse
import socket
import subprocess
import sys
import threading
import time

EXPECTED = b"[0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765, 10946]"
# A response of about 100 KB from the fib guest (every Fibonacci number below 10^200): it
# fits the default response buffer, so a slow reader must not hold a worker.
LARGE = "/1" + "0" * 200


def start(fibhost, guest):
    proc = subprocess.Popen(
        [fibhost, "--component", guest, "--workers", "4", "--listen", "127.0.0.1:0",
         "--disable-logging", "--header-read-timeout", "5", "--send-timeout", "5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in proc.stderr:
        if line.startswith("Serving HTTP on http://"):
            host, port = line.split("http://")[1].strip().rstrip("/").rsplit(":", 1)
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, (host, int(port))
        if time.time() > deadline:
            break
    proc.kill()
    sys.exit("fibhost did not start")


def hostile(addr, n):
    held = []
    for _ in range(n):  # silent: connect, say nothing
        held.append(socket.create_connection(addr))
    for rcvbuf in (None, 1):  # slow readers, then zero-window readers
        for _ in range(n):
            s = socket.socket()
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.connect(addr)
            s.sendall(f"GET {LARGE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            held.append(s)
    return held


def good(addr, until, counts, lock):
    while time.time() < until:
        ok = False
        try:
            with socket.create_connection(addr, timeout=30) as s:
                s.sendall(b"GET /9000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                ok = data.startswith(b"HTTP/1.1 200") and data.endswith(EXPECTED)
        except OSError:
            pass
        with lock:
            counts[0 if ok else 1] += 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("fibhost")
    parser.add_argument("guest")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--hostile", type=int, default=50)
    parser.add_argument("--out")
    args = parser.parse_args()
    proc, addr = start(args.fibhost, args.guest)
    try:
        held = hostile(addr, args.hostile)
        counts, lock = [0, 0], threading.Lock()
        until = time.time() + args.seconds
        threads = [threading.Thread(target=good, args=(addr, until, counts, lock)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = counts[0] + counts[1]
        line = (f"| fibhost, {args.hostile} silent + {args.hostile} slow-read + {args.hostile} "
                f"zero-window connections held | {counts[0]} of {total} good requests answered "
                f"({100.0 * counts[0] / max(total, 1):.1f}%) in {args.seconds:.0f} s |")
        print(line)
        if args.out:
            with open(args.out, "w") as f:
                f.write(line + "\n")
        for s in held:
            s.close()
        return 0 if total and counts[1] == 0 else 1
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
