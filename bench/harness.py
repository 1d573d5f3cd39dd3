#!/usr/bin/env python3
"""Helpers of bench/run.sh that are clearer in Python than in bash.

Subcommands:
  rss SID OUT MARKER       sample the summed RSS of every process in session SID every 50 ms
                           until SIGTERM, then write "PEAK_KIB PEAK_SINCE_MARKER_KIB" to OUT
                           (the second counts only samples taken after file MARKER exists)
  cpu SID                  print the CPU time used so far by the processes in session SID, in
                           microseconds (user + system, reaped children included)
  parse ab|wrk|oha FILE    print "RPS P50_MS P99_MS FAILED NON2XX COMPLETED KINDS" from a load
                           tool's output (KINDS: which failures, e.g. "read", or "-")
  report RUN_DIR OUT       aggregate the runs run.sh recorded in RUN_DIR (runs.tsv, meta.tsv,
                           systems.tsv, loads.tsv, notes.tsv, tools.tsv, instantiations.tsv)
                           into Markdown,
                           medians over rounds

Only the standard library: run.sh calls this with the system's python3, before or without
the benchmark venv.
"""

import json
import os
import re
import signal
import statistics
import sys
import time

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# --- peak RSS of a process tree ---------------------------------------------------------


def session_processes(sid):
    """(pid, stat fields from `state` on) of every process whose session is `sid`.

    run.sh starts every server with `setsid`, so the session holds the server and everything
    it forks (uWSGI's master, router and workers) and nothing else.
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            # The command name may hold spaces and parentheses: split after the last ')'.
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == sid:  # state ppid pgrp session ...
                yield entry, fields
        except (OSError, ValueError, IndexError):
            continue  # the process exited while we looked


def session_rss_kib(sid):
    """Summed resident set of the session's processes. Summed RSS counts pages shared between
    forked processes once per process: it overstates uWSGI's real footprint, as `ps`-based
    comparisons (the article's included) do."""
    total = 0
    for pid, _ in session_processes(sid):
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_KIB
        except (OSError, ValueError, IndexError):
            continue
    return total


def session_cpu_ticks(sid):
    """CPU time (user + system, in clock ticks) of the session's processes, including the
    children they have reaped (uWSGI's recycled workers)."""
    return sum(sum(int(v) for v in fields[11:15]) for _, fields in session_processes(sid))


def rss(sid, out, marker):
    peak = peak_marked = 0

    def finish(*_):
        with open(out, "w") as f:
            f.write(f"{peak} {peak_marked}\n")
        sys.exit(0)

    signal.signal(signal.SIGTERM, finish)
    while True:
        kib = session_rss_kib(sid)
        peak = max(peak, kib)
        if os.path.exists(marker):
            peak_marked = max(peak_marked, kib)
        time.sleep(0.05)


# --- load tool output -------------------------------------------------------------------


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def failure_kinds(names, match):
    """The kinds of failure that occurred, e.g. "read" or "connect,timeout"; "-" if none."""
    if not match:
        return "-"
    kinds = [name for name, count in zip(names, match.groups()) if int(count)]
    return ",".join(kinds) or "-"


def parse_ab(text):
    def num(pattern):
        return re.search(pattern, text, re.M)

    rps = num(r"^Requests per second:\s+([\d.]+)")
    if not rps:
        raise ValueError("no 'Requests per second' line: ab did not finish")
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\d+)", text, re.M))
    failed = num(r"^Failed requests:\s+(\d+)")
    kinds = num(r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)")
    non2xx = num(r"^Non-2xx responses:\s+(\d+)")
    completed = num(r"^Complete requests:\s+(\d+)")
    return (
        float(rps.group(1)),
        float(pct.get("50", "nan")),
        float(pct.get("99", "nan")),
        int(failed.group(1)) if failed else 0,
        int(non2xx.group(1)) if non2xx else 0,
        int(completed.group(1)) if completed else 0,
        failure_kinds(("connect", "receive", "length", "exception"), kinds),
    )


def parse_wrk(text):
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not rps:
        raise ValueError("no 'Requests/sec' line: wrk did not finish")
    pct = {p: to_ms(v, u) for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\b", text, re.M)}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    completed = re.search(r"^\s+(\d+) requests in", text, re.M)
    return (
        float(rps.group(1)),
        pct.get("50", float("nan")),
        pct.get("99", float("nan")),
        sum(int(n) for n in errors.groups()) if errors else 0,
        int(non2xx.group(1)) if non2xx else 0,
        int(completed.group(1)) if completed else 0,
        failure_kinds(("connect", "read", "write", "timeout"), errors),
    )


def parse_oha(text):
    data = json.loads(text)
    summary = data["summary"]
    percentiles = data.get("latencyPercentiles", {})
    codes = {int(k): v for k, v in data.get("statusCodeDistribution", {}).items()}
    errors = sum(data.get("errorDistribution", {}).values())
    completed = sum(codes.values())
    return (
        float(summary["requestsPerSec"]),
        float(percentiles.get("p50") or "nan") * 1000,
        float(percentiles.get("p99") or "nan") * 1000,
        errors,
        sum(v for k, v in codes.items() if not 200 <= k < 300),
        completed,
        "errors" if errors else "-",
    )


def parse(tool, path):
    with open(path, errors="replace") as f:
        text = f.read()
    values = {"ab": parse_ab, "wrk": parse_wrk, "oha": parse_oha}[tool](text)
    print(" ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in values))


# --- report -----------------------------------------------------------------------------

# Columns of the TSV run.sh appends to, one line per (round, load, system).
COLUMNS = [
    "round", "load", "system", "rps", "p50_ms", "p99_ms", "failed", "non2xx", "completed",
    "peak_rss_kib", "load_rss_kib", "startup_ms", "body_ok", "cpu_us_per_req", "failure_kinds",
]
NUMERIC = COLUMNS[3:-1]

# Reference columns of the ratio tables, in this order, when they were measured.
REFERENCES = [
    "native", "fibhost-nolog", "wasmtime", "wasmtime-reuse", "uwsgi", "uwsgi-flask", "nginx-proxy",
]


def median(values):
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def fmt(value, digits=0):
    if value != value:
        return "–"
    return f"{value:,.{digits}f}"


def read_tsv(path):
    """Rows of a tab-separated file as lists of fields (none if the file is missing)."""
    try:
        with open(path) as f:
            return [line.rstrip("\n").split("\t") for line in f if line.strip()]
    except FileNotFoundError:
        return []


def report(run_dir, out):
    """Writes the Markdown report of the run whose files run.sh left in `run_dir`."""
    meta = {key: value for key, value in read_tsv(f"{run_dir}/meta.tsv")}
    meta["cpus"] = int(meta["cpus"])
    meta["systems"] = [{"name": n, "command": c} for n, c in read_tsv(f"{run_dir}/systems.tsv")]
    meta["loads"] = [
        {"name": n, "title": t, "short": s, "command": c}
        for n, t, s, c in read_tsv(f"{run_dir}/loads.tsv")
    ]
    meta["notes"] = [line[0] for line in read_tsv(f"{run_dir}/notes.tsv")]
    meta["tools"] = [line[0] for line in read_tsv(f"{run_dir}/tools.tsv")]
    runs = []
    for fields in read_tsv(f"{run_dir}/runs.tsv"):
        row = dict(zip(COLUMNS, fields))
        for key in NUMERIC:
            try:
                row[key] = float(row[key])
            except (KeyError, ValueError):
                row[key] = float("nan")
        runs.append(row)

    systems = [s["name"] for s in meta["systems"] if any(r["system"] == s["name"] for r in runs)]
    loads = [l for l in meta["loads"] if any(r["load"] == l["name"] for r in runs)]

    def cell(load, system, key, agg=median):
        return agg([r[key] for r in runs if r["load"] == load and r["system"] == system])

    def failed_cell(load, system):
        """The median failure count, with the kinds seen in any round (wrk's "read" errors
        are connections the server closed, e.g. uWSGI's router closing after each response)."""
        kinds = sorted({
            kind
            for r in runs
            if r["load"] == load and r["system"] == system
            for kind in r.get("failure_kinds", "-").split(",")
            if kind != "-"
        })
        count = fmt(cell(load, system, "failed"))
        return f"{count} ({', '.join(kinds)})" if kinds else count

    lines = [f"# fibhost benchmark — {meta['date']}", ""]
    lines += [
        f"- Commit `{meta['commit']}`; {meta['cpus']} CPUs ({meta['cpu_model']}), "
        f"kernel {meta['kernel']}; load average before the run: {meta['loadavg']}.",
        f"- {meta['rounds']} round(s); in each round every system runs each load once, in the "
        "order listed (A B A B across rounds), on a freshly started server after a warm-up of "
        f"{meta['warmup']}. Medians over rounds; req/s also shows the range.",
        "- Load generator and server share the machine's CPUs: compare ratios within one run, "
        "not absolute numbers across machines.",
        "",
    ]
    for load in loads:
        name = load["name"]
        lines += [f"## {load['title']}", "", f"`{load['command']}`", ""]
        native = cell(name, "native", "rps")
        lines.append(
            "| System | req/s | range | × native | p50 ms | p99 ms | failed | non-2xx "
            "| CPU µs/req | peak RSS MiB |"
        )
        lines.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for system in systems:
            rps = cell(name, system, "rps")
            if rps != rps:
                continue
            lo, hi = cell(name, system, "rps", min), cell(name, system, "rps", max)
            lines.append(
                f"| {system} | {fmt(rps)} | {fmt(lo)}–{fmt(hi)} | {fmt(rps / native, 2)} "
                f"| {fmt(cell(name, system, 'p50_ms'), 1)} | {fmt(cell(name, system, 'p99_ms'), 1)} "
                f"| {failed_cell(name, system)} | {fmt(cell(name, system, 'non2xx'))} "
                f"| {fmt(cell(name, system, 'cpu_us_per_req'), 1)} "
                f"| {fmt(cell(name, system, 'load_rss_kib') / 1024, 1)} |"
            )
        lines.append("")

        refs = [r for r in REFERENCES if r in systems and cell(name, r, "rps") == cell(name, r, "rps")]
        if refs:
            lines += [f"Ratios of median req/s, {load['short']} (row ÷ column):", ""]
            lines.append("| System | " + " | ".join(f"÷ {r}" for r in refs) + " |")
            lines.append("|---|" + "--:|" * len(refs))
            for system in systems:
                rps = cell(name, system, "rps")
                if rps != rps:
                    continue
                ratios = [fmt(rps / cell(name, r, "rps"), 2) for r in refs]
                lines.append(f"| {system} | " + " | ".join(ratios) + " |")
            lines.append("")

    # What recycling every request costs, derived from the no-keep-alive load: the extra
    # wall time per request at saturation between fibhost with and without --max-requests 1.
    derived = []
    for load in loads:
        base, fresh = cell(load["name"], "fibhost-nolog", "rps"), cell(load["name"], "fibhost-maxreq1", "rps")
        if base == base and fresh == fresh:
            extra_us = (1 / fresh - 1 / base) * 1e6
            if extra_us <= 0:
                derived.append(
                    f"- {load['short']}: not measurable in this run: fibhost-maxreq1 was not "
                    "slower than fibhost-nolog (noise, or the load tool was the bottleneck)."
                )
                continue
            derived.append(
                f"- {load['short']}: a fresh instance per request costs ≈ {extra_us:,.1f} µs of "
                "wall time per request at saturation on this machine (fibhost-maxreq1 vs "
                "fibhost-nolog; the load generator shares the CPUs, so this is not CPU time)."
            )
    # fibhost's own account (its admin metrics) of the instances it created during each
    # max-requests=1 load: the time one instantiation takes, off the request path.
    for load in loads:
        counted = [
            (int(float(after[0])) - int(float(before[0])), float(after[1]) - float(before[1]))
            for rnd, name, before, after in (
                (f[0], f[1], f[2].split(), f[3].split())
                for f in read_tsv(f"{run_dir}/instantiations.tsv")
                if len(f) == 4
            )
            if name == load["name"] and len(before) == 2 and len(after) == 2
        ]
        per_instance = [seconds / count * 1e6 for count, seconds in counted if count > 0]
        if per_instance:
            derived.append(
                f"- {load['short']}: fibhost's metrics (`fibhost_instantiation_seconds_total` ÷ "
                f"`fibhost_instantiations_total`) put one fresh instance at "
                f"{fmt(median(per_instance), 1)} µs (median over rounds; "
                f"{fmt(median([c for c, _ in counted]))} instances per run)."
            )
    alone = re.search(r"instantiation: ([\d.]+) us .*? ([\d.]+) us the store", guest_call_output(run_dir))
    if alone:
        derived.append(
            f"- Alone, on one idle thread (`host/examples/guest_call.rs`): "
            f"{float(alone.group(1)):.2f} µs per instantiation and drop of the Rust guest, of "
            f"which {float(alone.group(2)):.2f} µs is fibhost's own (the store and its data); "
            "the rest is wasmtime instantiating the component and releasing its slot."
        )
    if derived:
        lines += ["## Derived: instantiation cost", ""] + derived + [""]

    lines += bound_section(run_dir, meta, loads, cell)
    lines += languages_section(run_dir, loads, systems, cell)

    lines += ["## Startup and memory", ""]
    lines.append(
        "| System | start → first 200, ms | peak RSS over its life, MiB | `/9000` body | command |"
    )
    lines.append("|---|--:|--:|---|---|")
    for spec in meta["systems"]:
        system = spec["name"]
        if system not in systems:
            continue
        startup = median([r["startup_ms"] for r in runs if r["system"] == system])
        peak = max(r["peak_rss_kib"] for r in runs if r["system"] == system)
        ok = all(r["body_ok"] == 1 for r in runs if r["system"] == system)
        lines.append(
            f"| {system} | {fmt(startup, 0)} | {fmt(peak / 1024, 1)} "
            f"| {'same as native' if ok else '**differs**'} | `{spec['command']}` |"
        )
    lines.append("")
    if meta.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in meta["notes"]] + [""]
    lines += ["Tools: " + "; ".join(meta["tools"]) + ".", ""]

    with open(out, "w") as f:
        f.write("\n".join(lines))


# The Fibonacci API in each guest language: the row that measures it and its component.
LANGUAGES = [
    ("Rust", "fibhost-nolog", "fib"),
    ("Rust, WASI 0.3", "fibhost-p3", "p3-fib"),
    ("Python", "fibhost-python", "python-fib"),
    ("JavaScript", "fibhost-js", "js-fib"),
    ("C", "fibhost-c", "c-fib"),
    ("Go", "fibhost-go", "go-fib"),
    ("Zig", "fibhost-zig", "zig-fib"),
]


def languages_section(run_dir, loads, systems, cell):
    """Per guest language: req/s on each load (and × native), peak RSS under the keep-alive
    load, and one instantiation as `fibhost check` timed it (median of 20)."""
    rows = []
    for language, system, guest in LANGUAGES:
        if system not in systems:
            continue
        instantiate = "–"
        try:
            with open(f"{run_dir}/check-{guest}.txt") as f:
                found = re.search(r"instantiate\s+median ([\d.]+) µs", f.read())
            if found:
                instantiate = found.group(1)
        except OSError:
            pass
        cells = []
        for load in loads:
            rps, native = cell(load["name"], system, "rps"), cell(load["name"], "native", "rps")
            cells.append(f"{fmt(rps)} ({fmt(rps / native, 2)}×)" if rps == rps else "–")
        rss = cell(loads[-1]["name"], system, "load_rss_kib") / 1024 if loads else float("nan")
        rows.append(
            f"| {language} | `guests/{guest}.wasm` | " + " | ".join(cells)
            + f" | {fmt(rss, 1)} | {instantiate} |"
        )
    if not rows:
        return []
    header = " | ".join(f"{load['short']} req/s (× native)" for load in loads)
    return [
        "## Guest languages",
        "",
        "The same API in each language, each served with its default configuration (one "
        "worker per CPU, access log off; the rows above). Instantiation: `fibhost check`'s "
        "median of 20 (in-process, no request).",
        "",
        f"| Language | component | {header} | peak RSS MiB ({loads[-1]['short']}) | instantiation µs |",
        "|---|---|" + "--:|" * (len(loads) + 2),
        *rows,
        "",
    ]


def guest_call_output(run_dir):
    """What host/examples/guest_call.rs printed before round 1 ("" if it did not run)."""
    try:
        with open(f"{run_dir}/guest_call.txt") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def bound_section(run_dir, meta, loads, cell):
    """How close to native a host can come that adds only the guest call to native's work.

    At saturation every CPU is busy, so one native request costs the machine `cpus / rps`
    CPU-seconds in all (server, load generator, kernel). A wasm host does all of that and
    runs the guest too; if that were all it added, it would serve `T / (T + call)` of
    native's rate, where `T = cpus / native rps` and `call` is the guest call measured alone.
    """
    text = guest_call_output(run_dir)
    found = re.search(r"guest call: ([\d.]+) us", text)
    if not found:
        return []
    call_us = float(found.group(1))
    lines = [
        "## Derived: the bound the guest call sets",
        "",
        f"One guest call alone (`host/examples/guest_call.rs`: `GET /9000` through the Rust "
        f"guest and its body drained, one thread, no socket, no hyper): **{call_us:.2} µs**.",
    ]
    handed = re.search(r"through a worker task: ([\d.]+) us", text)
    if handed:
        lines.append(
            f"The same call made by a worker task fed through a channel, as the pool does: "
            f"{float(handed.group(1)):.2f} µs, so the hand-off costs "
            f"{float(handed.group(1)) - call_us:+.2f} µs per request: the most that running "
            "the guest inline in the connection task could save."
        )
    lines.append("")
    for load in loads:
        name = load["name"]
        native_rps = cell(name, "native", "rps")
        if native_rps != native_rps:
            continue
        machine_us = meta["cpus"] * 1e6 / native_rps
        bound = machine_us / (machine_us + call_us)
        line = (
            f"- {load['short']}: native used {machine_us:.1f} µs of machine CPU per request "
            f"(all {meta['cpus']} CPUs ÷ its req/s); a host adding only the guest call "
            f"reaches at most **{bound:.2f}× native**"
        )
        nolog = cell(name, "fibhost-nolog", "rps")
        if nolog == nolog:
            line += f"; fibhost-nolog measured {nolog / native_rps:.2f}×"
        native_cpu = cell(name, "native", "cpu_us_per_req")
        nolog_cpu = cell(name, "fibhost-nolog", "cpu_us_per_req")
        if native_cpu == native_cpu and nolog_cpu == nolog_cpu:
            line += (
                f". Server CPU per request: native {native_cpu:.1f} µs, fibhost-nolog "
                f"{nolog_cpu:.1f} µs ({nolog_cpu - native_cpu:+.1f}); the guest call alone: "
                f"{call_us:.1f} µs"
            )
        lines.append(line + ".")
    return lines + [""]


def main(argv):
    if len(argv) >= 4 and argv[0] == "rss":
        rss(int(argv[1]), argv[2], argv[3])
    elif len(argv) == 2 and argv[0] == "cpu":
        print(session_cpu_ticks(int(argv[1])) * 1_000_000 // os.sysconf("SC_CLK_TCK"))
    elif len(argv) == 3 and argv[0] == "parse":
        parse(argv[1], argv[2])
    elif len(argv) == 3 and argv[0] == "report":
        report(argv[1], argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
