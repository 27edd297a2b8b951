//! At SIGTERM a request sent on a kept-alive connection is answered (with `Connection: close`), not
//! reset, and vitals still exits within a second.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{unsafe_kill, Vitals};

/// Sends one empty OTLP/HTTP trace export and reads the answer's head (status line and headers).
fn export(s: &mut TcpStream) -> std::io::Result<String> {
    s.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(head)
}

#[test]
fn a_request_on_a_kept_alive_connection_is_answered_at_sigterm() {
    let mut v = Vitals::start(&[]);
    let (_, http) = v.otlp_addrs();
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(export(&mut s).unwrap().starts_with("http/1.1 200"));
    let started = Instant::now();
    unsafe_kill(v.child.id(), "TERM");
    std::thread::sleep(Duration::from_millis(50));
    let head = export(&mut s).expect("answered, not reset");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let status = v.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}
