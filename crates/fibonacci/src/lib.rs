//! The Fibonacci API: request parsing, the sequence, and the exact response bodies.
//!
//! This crate is the single definition of the API that every fibhost Rust program serves: the
//! wasm guest in `guests/fib` and the native hyper baseline in `bench/native` both call
//! [`respond`], so a benchmark compares hosts, never two implementations of the algorithm.
//!
//! The API (`GET /<n>`): the sequence seeded with 0 and 1, extended while its last element is
//! below `n`, as a JSON array with `", "` between elements and no trailing newline.
//! `n` is an optional sign and ASCII digits, at most [`MAX_DIGITS`] digits; arithmetic is exact
//! for every accepted `n` (decimal limbs, no floats, no fixed-width overflow).

#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::fmt::Write as _;

/// The longest number (in digits, leading zeros included, sign excluded) that `GET /<n>` accepts.
///
/// 10^1000 (1,001 digits) must be served exactly; 1,024 leaves room for that and keeps the
/// largest response near 2.5 MB (about 4,900 numbers of up to 1,024 digits).
pub const MAX_DIGITS: usize = 1024;

/// The `Allow` header value sent with 405 responses.
pub const ALLOWED_METHODS: &str = "GET, HEAD";

/// The content type of every response of the API, errors included.
pub const CONTENT_TYPE: &str = "application/json";

/// A complete HTTP answer of the API, independent of any HTTP library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The JSON body. For `HEAD` this is the body `GET` would send, so that the caller can
    /// report its length; the caller must not send it.
    pub body: String,
    /// Whether the response must carry `Allow: GET, HEAD` (405 only).
    pub allow: bool,
}

impl Reply {
    /// The response headers as `wasi:http` `fields.from-list` takes them: `content-type`,
    /// `content-length` (of `body`, also for `HEAD`) and, on a 405, `allow`.
    pub fn header_entries(&self) -> Vec<(String, Vec<u8>)> {
        let mut entries = vec![
            (
                String::from("content-type"),
                CONTENT_TYPE.as_bytes().to_vec(),
            ),
            (
                String::from("content-length"),
                format!("{}", self.body.len()).into_bytes(),
            ),
        ];
        if self.allow {
            entries.push((String::from("allow"), ALLOWED_METHODS.as_bytes().to_vec()));
        }
        entries
    }

    fn ok(body: String) -> Self {
        Reply {
            status: 200,
            body,
            allow: false,
        }
    }

    fn error(status: u16, message: &str) -> Self {
        let mut body = String::with_capacity(message.len() + 16);
        body.push_str("{\"error\": \"");
        push_json_escaped(&mut body, message);
        body.push_str("\"}");
        Reply {
            status,
            body,
            allow: status == 405,
        }
    }
}

/// Answers one request of the API: `method` as sent (e.g. `"GET"`), `path_with_query` as the
/// request target's path and optional query (e.g. `"/9000?x=1"`; the query is ignored).
pub fn respond(method: &str, path_with_query: &str) -> Reply {
    if method != "GET" && method != "HEAD" {
        return Reply::error(
            405,
            &format!("method {method} is not allowed; use GET or HEAD"),
        );
    }
    let path = path_with_query.split('?').next().unwrap_or_default();
    let Some(segment) = path.strip_prefix('/') else {
        return Reply::error(404, "not found; use GET /<n>, for example /9000");
    };
    if segment.is_empty() || segment.contains('/') {
        return Reply::error(404, "not found; use GET /<n>, for example /9000");
    }
    match parse_bound(segment) {
        Ok(bound) => Reply::ok(sequence_json(&bound)),
        Err(e) => Reply::error(400, &e.message(segment)),
    }
}

/// Why a path segment is not an accepted number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// A sign with no digits after it.
    NoDigits,
    /// A byte that is not an ASCII digit, at this 1-based position of the segment.
    Unexpected {
        /// 1-based position in the segment.
        position: usize,
        /// The offending byte.
        byte: u8,
    },
    /// More than [`MAX_DIGITS`] digits.
    TooLong {
        /// How many digits were sent.
        digits: usize,
    },
}

impl ParseError {
    /// The message sent to the client in `{"error": ...}`.
    pub fn message(&self, input: &str) -> String {
        match *self {
            ParseError::NoDigits => {
                format!("`{input}` is not an integer: expected digits after the sign")
            }
            ParseError::Unexpected { position, byte } => {
                let shown = if byte.is_ascii_graphic() {
                    format!("'{}'", byte as char)
                } else {
                    format!("byte 0x{byte:02x}")
                };
                format!(
                    "`{input}` is not an integer: unexpected {shown} at position {position}; \
                     expected an optional sign followed by ASCII digits"
                )
            }
            ParseError::TooLong { digits } => {
                format!("the number has {digits} digits; the limit is {MAX_DIGITS}")
            }
        }
    }
}

/// The upper bound `n` of a request, reduced to what the sequence needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// `n <= 1`: the answer is the seed `[0, 1]`.
    Seed,
    /// `1 < n < 10^19`: fits in `u64` arithmetic. The sequence stops at the first element
    /// `>= n`, so its largest element is at most fib(93) = 12,200,160,415,121,876,738, the
    /// first Fibonacci number above 10^19 and the largest below `u64::MAX`.
    ///
    /// `u64`, not `u128`: in wasm, 128-bit division (what printing a `u128` runs on) is a
    /// software routine; printing the article's `/9000` answer as `u128` was measured as the
    /// largest part of the Rust guest's own CPU time.
    Small(u64),
    /// Anything larger, as decimal limbs.
    Big(BigUint),
}

/// Parses an optional sign followed by ASCII digits.
pub fn parse_bound(s: &str) -> Result<Bound, ParseError> {
    let bytes = s.as_bytes();
    let (negative, digits) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        Some(b'+') => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    let offset = bytes.len() - digits.len();
    if digits.is_empty() {
        return Err(ParseError::NoDigits);
    }
    if let Some(i) = digits.iter().position(|b| !b.is_ascii_digit()) {
        return Err(ParseError::Unexpected {
            position: offset + i + 1,
            byte: digits[i],
        });
    }
    if digits.len() > MAX_DIGITS {
        return Err(ParseError::TooLong {
            digits: digits.len(),
        });
    }
    let significant = {
        let zeros = digits.iter().take_while(|&&b| b == b'0').count();
        &digits[zeros..]
    };
    if negative || significant.len() <= 1 && significant.first().is_none_or(|&d| d <= b'1') {
        return Ok(Bound::Seed);
    }
    if significant.len() <= 19 {
        let n = significant
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        return Ok(Bound::Small(n));
    }
    Ok(Bound::Big(BigUint::from_decimal(significant)))
}

/// The JSON array for `bound`, e.g. `[0, 1, 1, 2]`.
pub fn sequence_json(bound: &Bound) -> String {
    match bound {
        Bound::Seed => String::from("[0, 1]"),
        Bound::Small(n) => {
            let mut out = String::with_capacity(256);
            out.push_str("[0, 1");
            let (mut a, mut b) = (0u64, 1u64);
            // `itoa` rather than `write!`: no formatting machinery per number.
            let mut digits = itoa::Buffer::new();
            while b < *n {
                (a, b) = (b, a + b);
                out.push_str(", ");
                out.push_str(digits.format(b));
            }
            out.push(']');
            out
        }
        Bound::Big(n) => {
            let mut out = String::with_capacity(n.digits() * n.digits() * 5 / 2);
            out.push_str("[0, 1");
            let (mut a, mut b) = (BigUint::from_small(0), BigUint::from_small(1));
            while b.cmp(n) == Ordering::Less {
                a.add_assign(&b);
                core::mem::swap(&mut a, &mut b);
                out.push_str(", ");
                b.write_decimal(&mut out);
            }
            out.push(']');
            out
        }
    }
}

/// Base of the decimal limbs: 18 digits fit a `u64` and the sum of two limbs cannot overflow.
const LIMB_BASE: u64 = 1_000_000_000_000_000_000;
const LIMB_DIGITS: usize = 18;

/// An unsigned integer stored as base-10^18 limbs, least significant first, so that adding
/// is exact and printing in decimal needs no division.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BigUint {
    limbs: Vec<u64>,
}

impl BigUint {
    fn from_small(v: u64) -> Self {
        debug_assert!(v < LIMB_BASE);
        BigUint { limbs: vec![v] }
    }

    /// Builds from ASCII digits with no leading zeros (at least one digit).
    fn from_decimal(digits: &[u8]) -> Self {
        let limbs = digits
            .rchunks(LIMB_DIGITS)
            .map(|chunk| {
                chunk
                    .iter()
                    .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'))
            })
            .collect();
        BigUint { limbs }
    }

    /// An estimate of the decimal length, used to size output buffers.
    fn digits(&self) -> usize {
        self.limbs.len() * LIMB_DIGITS
    }

    fn add_assign(&mut self, other: &BigUint) {
        if self.limbs.len() < other.limbs.len() {
            self.limbs.resize(other.limbs.len(), 0);
        }
        let mut carry = 0;
        for (i, limb) in self.limbs.iter_mut().enumerate() {
            let sum = *limb + other.limbs.get(i).copied().unwrap_or(0) + carry;
            (*limb, carry) = if sum >= LIMB_BASE {
                (sum - LIMB_BASE, 1)
            } else {
                (sum, 0)
            };
        }
        if carry > 0 {
            self.limbs.push(carry);
        }
    }

    fn write_decimal(&self, out: &mut String) {
        let mut limbs = self.limbs.iter().rev();
        if let Some(top) = limbs.next() {
            let _ = write!(out, "{top}");
        }
        for limb in limbs {
            let _ = write!(out, "{limb:018}");
        }
    }
}

impl Ord for BigUint {
    fn cmp(&self, other: &Self) -> Ordering {
        // Limbs carry no leading zero limbs, so the longer number is the larger.
        self.limbs
            .len()
            .cmp(&other.limbs.len())
            .then_with(|| self.limbs.iter().rev().cmp(other.limbs.iter().rev()))
    }
}

impl PartialOrd for BigUint {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn push_json_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    /// An independent reference: the sequence by repeated string addition.
    fn reference(n_decimal: &str) -> String {
        fn add(a: &str, b: &str) -> String {
            let (a, b) = (a.as_bytes(), b.as_bytes());
            let mut out = Vec::new();
            let (mut i, mut j, mut carry) = (a.len(), b.len(), 0u8);
            while i > 0 || j > 0 || carry > 0 {
                let mut d = carry;
                if i > 0 {
                    i -= 1;
                    d += a[i] - b'0';
                }
                if j > 0 {
                    j -= 1;
                    d += b[j] - b'0';
                }
                out.push(b'0' + d % 10);
                carry = d / 10;
            }
            out.reverse();
            String::from_utf8(out).unwrap()
        }
        fn less(a: &str, b: &str) -> bool {
            (a.len(), a) < (b.len(), b)
        }
        let mut seq = vec!["0".to_string(), "1".to_string()];
        while less(seq.last().unwrap(), n_decimal) {
            let next = add(&seq[seq.len() - 2], &seq[seq.len() - 1]);
            seq.push(next);
        }
        format!("[{}]", seq.join(", "))
    }

    #[test]
    fn article_example() {
        let r = respond("GET", "/9000");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body,
            "[0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, \
             4181, 6765, 10946]"
        );
    }

    #[test]
    fn seed_cases() {
        for n in [
            "0",
            "1",
            "-5",
            "-0",
            "+1",
            "0001",
            "-99999999999999999999999",
        ] {
            assert_eq!(respond("GET", &format!("/{n}")).body, "[0, 1]", "n = {n}");
        }
        assert_eq!(respond("GET", "/2").body, "[0, 1, 1, 2]");
        assert_eq!(respond("GET", "/3").body, "[0, 1, 1, 2, 3]");
    }

    #[test]
    fn matches_reference_across_the_small_big_boundary() {
        let mut cases: Vec<String> = ["2", "4", "5", "6", "9000", "10946", "10947"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for exp in [17, 18, 19, 20, 30, 36, 37, 100, 1000] {
            let mut s = "1".to_string();
            s.extend(core::iter::repeat_n('0', exp));
            cases.push(s.clone());
            s.pop();
            s.push('1');
            cases.push(s);
            cases.push("9".repeat(exp));
        }
        cases.push("12200160415121876738".into()); // fib(93), the largest u64 Fibonacci number
        cases.push("12200160415121876739".into());
        for n in cases {
            assert_eq!(
                respond("GET", &format!("/{n}")).body,
                reference(&n),
                "n = {n}"
            );
        }
    }

    #[test]
    fn limit_is_inclusive() {
        let at_limit = "9".repeat(MAX_DIGITS);
        assert_eq!(respond("GET", &format!("/{at_limit}")).status, 200);
        let over = "1".repeat(MAX_DIGITS + 1);
        let r = respond("GET", &format!("/{over}"));
        assert_eq!(r.status, 400);
        assert!(r.body.contains("limit is 1024"), "{}", r.body);
    }

    #[test]
    fn bad_numbers_are_400_with_reason() {
        for (input, needle) in [
            ("abc", "unexpected 'a' at position 1"),
            ("1.5", "unexpected '.' at position 2"),
            ("1e3", "unexpected 'e' at position 2"),
            ("-", "expected digits after the sign"),
            ("+", "expected digits after the sign"),
            ("--1", "unexpected '-' at position 2"),
            ("%20", "unexpected '%' at position 1"),
        ] {
            let r = respond("GET", &format!("/{input}"));
            assert_eq!(r.status, 400, "{input}");
            assert!(r.body.starts_with("{\"error\": \""), "{}", r.body);
            assert!(r.body.contains(needle), "{input}: {}", r.body);
        }
    }

    #[test]
    fn routing() {
        assert_eq!(respond("GET", "/").status, 404);
        assert_eq!(respond("GET", "/1/2").status, 404);
        assert_eq!(respond("GET", "/9000/").status, 404);
        assert_eq!(respond("GET", "/9000?pretty=1").status, 200);
        assert_eq!(respond("HEAD", "/5").status, 200);
        let r = respond("POST", "/5");
        assert_eq!((r.status, r.allow), (405, true));
        assert!(r.body.contains("POST"));
    }

    #[test]
    fn error_messages_are_valid_json_strings() {
        let r = respond("GET", "/a\"b\\c");
        assert!(r.body.contains("a\\\"b\\\\c"), "{}", r.body);
    }
}
