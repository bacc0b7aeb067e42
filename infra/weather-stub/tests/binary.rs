//! The `weather-stub` binary over real HTTP: starts on a free port, answers forecasts, counts requests.

// Test code: a failed setup or a broken expectation stops the test with its reason.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[test]
fn the_binary_serves_forecasts_and_counts_them() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weather-stub"))
        .args(["--port", "0", "--seed", "7"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start weather-stub");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("listening line");
    let addr = line.trim().rsplit("http://").next().expect("address").to_owned();

    let (status, body) =
        http_get(&addr, "/v1/forecast?latitude=52.5,48.1&longitude=13.4,11.6&hourly=temperature_2m&start_date=2026-11-24&end_date=2026-11-24");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"temperature_2m\":\"°C\""), "{body}");
    let (_, stats) = http_get(&addr, "/stats");
    assert!(stats.contains("\"requests\":1") && stats.contains("\"coordinates\":2"), "{stats}");

    let _ = child.kill();
    let _ = child.wait();
}
