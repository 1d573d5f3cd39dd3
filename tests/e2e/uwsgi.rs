//! The uwsgi protocol: real nginx with `uwsgi_pass` and the stock `uwsgi_params` in front of
//! fibhost's `uwsgi-socket`, as estates built on uWSGI run it.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use http::{Method, StatusCode};

use crate::deploy::{Nginx, Scratch, free_port};
use crate::{reference_sequence, start};
use fibhost_e2e::{Http, Server, curl, guests};

/// nginx on a free loopback port passing everything to the uwsgi `upstreams` (`host:port` or
/// `unix:/path`), retrying on the next one when one fails.
fn nginx(name: &str, upstreams: &[String]) -> Nginx {
    let scratch = Scratch::new(name);
    let dir = scratch.0.display().to_string();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let servers: String = upstreams
        .iter()
        .map(|u| format!("server {u} max_fails=0;\n"))
        .collect();
    let temp: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|kind| format!("{kind}_temp_path {dir}/{kind}_temp;\n"))
        .collect();
    let config = format!(
        "daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n access_log off;\n {temp}\n upstream fibhost {{\n {servers} }}\n\
         server {{\n listen {addr};\n keepalive_timeout 60;\n location / {{\n\
         include /etc/nginx/uwsgi_params;\n uwsgi_pass fibhost;\n\
         uwsgi_next_upstream error timeout;\n }}\n }}\n}}\n"
    );
    Nginx::start(scratch, &config, addr)
}

fn uwsgi_addr(server: &Server) -> SocketAddr {
    server.logged_addr("uwsgi socket on ")
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_reaches_fibhost_over_uwsgi() {
    let server = start(
        guests::TESTBED,
        &["--workers", "2", "--uwsgi-socket", "127.0.0.1:0"],
    );
    let fib = start(
        guests::FIB,
        &["--workers", "1", "--uwsgi-socket", "127.0.0.1:0"],
    );
    let nginx = nginx("uwsgi-basic", &[uwsgi_addr(&server).to_string()]);
    let http = Http::new();

    // A POST body, streamed through by CONTENT_LENGTH.
    let body = "x".repeat(100_000);
    let reply = (http.send(Method::POST, &nginx.url("/echo"), body.clone().into()))
        .await
        .unwrap();
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, body));
    // Path and query as the client sent them (the testbed names them in its 404).
    let reply = http.get(&nginx.url("/nothing?x=1&y=%20")).await.unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(
        reply.text().contains("/nothing?x=1&y=%20"),
        "{}",
        reply.text()
    );
    // The access log names nginx's client, from REMOTE_ADDR.
    server.wait_for_output(
        "path=/nothing?x=1&y=%20 status=404",
        Duration::from_secs(10),
    );
    assert!(
        server.output().contains("client=127.0.0.1:"),
        "{}",
        server.output()
    );

    // The Fibonacci API, and nginx's keep-alive to its client.
    let fib_nginx = self::nginx("uwsgi-fib", &[uwsgi_addr(&fib).to_string()]);
    let reply = http.get(&fib_nginx.url("/9000")).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), reference_sequence("9000"));
    assert_eq!(reply.header("content-type"), "application/json");
    let (ok, _, err) = curl(&["-v", &fib_nginx.url("/1"), &fib_nginx.url("/2")]);
    assert!(ok, "{err}");
    assert!(err.contains("Re-using existing connection"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unix_socket_and_headers_reach_the_guest() {
    let test_app = format!("{}/../guests/wsgi-test.wasm", env!("CARGO_MANIFEST_DIR"));
    let component = if std::path::Path::new(&test_app).exists() {
        test_app
    } else {
        let required = std::env::var("FIBHOST_REQUIRE_ALL_GUESTS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "guests/wsgi-test.wasm is missing; run scripts/build-wsgi-examples.sh"
        );
        eprintln!("skipping: guests/wsgi-test.wasm is not built");
        return;
    };
    let scratch = Scratch::new("uwsgi-unix");
    let socket = scratch.0.join("fibhost.sock");
    let server = start(
        &component,
        &["--workers", "1", "--uwsgi-socket", socket.to_str().unwrap()],
    );
    server.wait_for_output("uwsgi socket on", Duration::from_secs(10));
    let nginx = nginx("uwsgi-unix-nginx", &[format!("unix:{}", socket.display())]);
    let reply = Http::new()
        .send_with(
            Method::GET,
            &nginx.url("/echo?a=1&a=2"),
            "".into(),
            &[("x-trace-id", "t-1")],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(seen["query_string"], "a=1&a=2", "{seen}");
    assert_eq!(seen["args"]["a"], serde_json::json!(["1", "2"]), "{seen}");
    assert_eq!(seen["x_headers"]["HTTP_X_TRACE_ID"], "t-1", "{seen}");
}

/// Bad packets close their connection and disturb nothing else.
#[test]
fn bad_packets_close_their_connection_only() {
    let server = start(
        guests::FIB,
        &["--workers", "1", "--uwsgi-socket", "127.0.0.1:0"],
    );
    let addr = uwsgi_addr(&server);
    let vars = |pairs: &[(&str, &str)]| {
        let mut out = Vec::new();
        for (k, v) in pairs {
            for item in [k, v] {
                out.extend_from_slice(&(item.len() as u16).to_le_bytes());
                out.extend_from_slice(item.as_bytes());
            }
        }
        out
    };
    let packet = |modifier1: u8, block: &[u8]| {
        let mut out = vec![modifier1];
        out.extend_from_slice(&(block.len() as u16).to_le_bytes());
        out.push(0);
        out.extend_from_slice(block);
        out
    };
    let good = vars(&[
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", "/10"),
        ("HTTP_HOST", "x"),
    ]);
    let mut overrun = vars(&[("REQUEST_METHOD", "GET")]);
    overrun.extend_from_slice(&[200, 0, b'a']);
    let cases: [(&str, Vec<u8>); 4] = [
        ("short", vec![0, 10]),
        ("overrunning var", packet(0, &overrun)),
        ("not a WSGI request", packet(5, &good)),
        ("lying block size", {
            let mut p = packet(0, &good);
            p[1] = 0xff; // says 255+ bytes, sends fewer, then closes its side
            p
        }),
    ];
    for (name, bytes) in cases {
        let mut stream = TcpStream::connect(addr).unwrap();
        // The server may close (or reset) as soon as it has seen enough of a bad packet: a
        // write or shutdown that then fails is the behaviour under test, not an error.
        let _ = stream.write_all(&bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut answer = Vec::new();
        // Closed: an end of stream, or a reset when unread bytes were left behind.
        let read = stream.read_to_end(&mut answer);
        let closed = match &read {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(closed, "{name}: the connection was not closed: {read:?}");
        assert!(
            answer.is_empty(),
            "{name}: answered {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // And a good packet still gets its answer, as uWSGI gives it: HTTP/1.1.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(&packet(0, &good)).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("[0, 1, 1, 2, 3, 5, 8, 13]"), "{answer}");
}

/// Two fibhost processes behind nginx: one drains (SIGTERM) while requests flow; nginx moves
/// them to the other and none fails.
#[tokio::test(flavor = "multi_thread")]
async fn nginx_fails_over_between_two_fibhosts() {
    let first = start(
        guests::FIB,
        &["--workers", "2", "--uwsgi-socket", "127.0.0.1:0"],
    );
    let mut second_args = vec!["--workers", "2", "--uwsgi-socket", "127.0.0.1:0"];
    second_args.extend(["--disable-logging"]);
    let second = start(guests::FIB, &second_args);
    let nginx = nginx(
        "uwsgi-failover",
        &[
            uwsgi_addr(&first).to_string(),
            uwsgi_addr(&second).to_string(),
        ],
    );
    let http = Http::new();
    let expected = reference_sequence("9000");
    let mut first = first;
    for n in 0..400 {
        if n == 100 {
            first.signal("TERM");
        }
        let reply = http.get(&nginx.url("/9000")).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {n}: {}\n{}",
            reply.text(),
            nginx.logs()
        );
        assert_eq!(reply.text(), expected);
    }
    let status = tokio::task::block_in_place(|| first.wait_exit(Duration::from_secs(60)));
    assert!(status.success());
}
