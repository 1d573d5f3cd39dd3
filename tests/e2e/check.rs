//! `fibhost check`: the report a guest author reads before deploying, on a good guest and on
//! each kind of bad one.

use std::process::Command;

use crate::fibhost;
use fibhost_e2e::guests;

/// Runs `fibhost check` with `args`: its exit code and its report.
fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(fibhost())
        .arg("check")
        .args(args)
        .output()
        .expect("fibhost runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The line of the report for `step`.
fn line<'a>(report: &'a str, step: &str) -> &'a str {
    (report.lines())
        .find(|l| l.contains(step))
        .unwrap_or_else(|| panic!("no `{step}` line in:\n{report}"))
}

/// The Fibonacci API's expectations file, as the conformance suite uses it.
pub fn fib_api() -> String {
    format!("{}/../tests/e2e/fib-api.toml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_good_guest_passes_every_step() {
    let (code, report) = check(&[guests::FIB, "--path", "/9000", "--expect", &fib_api()]);
    assert_eq!(code, 0, "{report}");
    assert!(
        !report.contains("FAIL") && !report.contains("notice"),
        "{report}"
    );
    assert!(line(&report, "load").contains("WASI 0.2"), "{report}");
    assert!(
        line(&report, "HEAD /9000").contains("200 OK, 0 B body"),
        "{report}"
    );
    assert!(
        line(&report, "POST /9000 1 MiB").contains("405"),
        "{report}"
    );
    assert!(
        line(&report, "1000 × GET /9000").contains("1000 × 200 on one instance")
            && line(&report, "1000 × GET /9000").contains("(+0 B per request)"),
        "{report}"
    );
    assert_eq!(
        report.matches("  ok  ").count(),
        13,
        "7 steps and 6 expectations: {report}"
    );
    assert!(
        report.ends_with("verdict: can be served with these settings\n"),
        "{report}"
    );
}

#[test]
fn a_guest_that_serves_one_request_per_instance_is_reported_and_passes() {
    let (code, report) = check(&[guests::TESTBED, "--path", "/once", "--requests", "10"]);
    assert_eq!(code, 0, "{report}");
    assert!(
        line(&report, "one per instance").contains("serves one request per instance"),
        "{report}"
    );
}

#[test]
fn a_leaking_guest_fails_with_the_rate_and_what_to_set() {
    // 16 KiB kept per request: 14 MiB over the measured 900 requests.
    let (code, report) = check(&[guests::TESTBED, "--path", "/grow?kib=16"]);
    assert_eq!(code, 1, "{report}");
    let soak = &report[report.find("1000 × GET").expect("a soak line")..];
    assert!(soak.contains("1000 × 200 on one instance"), "{report}");
    assert!(
        soak.contains("+16 KiB per request")
            && soak.contains("grows on every request (a leak)")
            && soak.contains("set reload-on-memory"),
        "{report}"
    );

    // Recycled before the limit by the operator's settings: a notice, not a failure. The
    // config's compile cache is used as `serve` would use it.
    let dir = fibhost_e2e::temp_dir("check");
    let (config, cache) = (dir.join("fibhost.toml"), dir.join("cache"));
    let text = format!(
        "max-requests = 500\ncache-dir = {:?}\n",
        cache.to_str().unwrap()
    );
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();
    let (code, report) = check(&[
        guests::TESTBED,
        "--path",
        "/grow?kib=16",
        "--config",
        config,
    ]);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("recycles it first"), "{report}");
    let cached = std::fs::read_dir(&cache).map_or(0, |entries| entries.count());
    assert!(cached > 0, "nothing in the cache-dir after the check");
}

#[test]
fn a_trapping_guest_fails_with_its_backtrace() {
    let (code, report) = check(&[guests::TESTBED, "--path", "/panic"]);
    assert_eq!(code, 1, "{report}");
    let get = &report[report.find("GET /panic").expect("a GET line")..];
    assert!(
        get.contains("the guest trapped")
            && get.contains("wasm backtrace")
            && get.contains("wasm `unreachable` instruction executed"),
        "{report}"
    );
    // Named by the guest's own functions (the guests keep their name section), followed by
    // what the guest wrote: the panic message.
    assert!(
        get.contains("testbed.wasm!") && get.contains("panicking::panic_fmt"),
        "{report}"
    );
    assert!(
        get.contains("The guest wrote:") && get.contains("testbed was asked to panic"),
        "{report}"
    );
    // Every later step traps the same way and says so instead of repeating the backtrace.
    assert_eq!(report.matches("wasm backtrace").count(), 1, "{report}");
    assert!(
        line(&report, "HEAD /panic").contains("failed as `GET /panic` did"),
        "{report}"
    );
}

#[test]
fn an_unmet_expectation_fails_and_says_what_differed() {
    let file = fibhost_e2e::temp_dir("check").join("expect.toml");
    std::fs::write(
        &file,
        "[[request]]\npath = \"/10\"\nexpect = { status = 201, body-contains = \"21\", \
         headers = { x-missing = \"1\" } }\n",
    )
    .unwrap();
    let (code, report) = check(&[
        guests::FIB,
        "--path",
        "/10",
        "--expect",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{report}");
    let failed = &report[report
        .find("expect #1 GET /10")
        .expect("an expectation line")..];
    assert!(
        failed.contains("status 200, expected 201")
            && failed.contains("does not contain \"21\"")
            && failed.contains("header `x-missing` is absent, expected \"1\""),
        "{report}"
    );
}

#[test]
fn a_file_that_is_not_a_component_fails_at_load() {
    let file = fibhost_e2e::temp_dir("check").join("text.wasm");
    std::fs::write(&file, "not wasm").unwrap();
    let (code, report) = check(&[file.to_str().unwrap()]);
    assert_eq!(code, 1, "{report}");
    assert!(
        line(&report, "load").contains("FAIL") && report.contains("is not a WebAssembly component"),
        "{report}"
    );

    let (code, report) = check(&[guests::FIB, "--expect", "/nonexistent/expect.toml"]);
    assert_eq!(code, 2, "{report}");
    assert!(report.contains("cannot read expectations file"), "{report}");
}
