//! Fuzzes the sock_diag netlink reply parser (one datagram of a SOCK_DIAG_BY_FAMILY dump → listeners):
//! any bytes give listeners, "done" or an error, never a panic, an out-of-bounds read or an arithmetic
//! overflow, and every listener comes from a whole message inside the datagram.
#![no_main]

use vitals::probe::sockets::{parse_sock_diag_reply, DumpProgress};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let result = parse_sock_diag_reply(data, &mut out);
    // A listener is a 16-byte header plus a 72-byte inet_diag_msg.
    assert!(out.len() * 88 <= data.len(), "{} listeners from {} bytes", out.len(), data.len());
    if let Ok(DumpProgress::Done) = result {
        assert!(data.len() >= 16);
    }
});
