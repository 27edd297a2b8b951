//! Fuzzes the cgroup file parsers (/proc/PID/cgroup membership, single values, `max`, `cpu.max`,
//! flat-keyed files, /proc/net/tcp for accept queues): any bytes give a value or an error, never a
//! panic or an arithmetic overflow. The first byte picks the parser.
#![no_main]

use vitals::probe::{cgroup, sockets};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, buf)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => drop(cgroup::parse_membership(buf)),
        1 => drop(cgroup::parse_u64(buf)),
        2 => drop(cgroup::parse_max(buf)),
        3 => drop(cgroup::parse_cpu_max(buf)),
        4 => drop(cgroup::flat_key(buf, "nr_throttled")),
        _ => drop(sockets::parse_proc_net_tcp(&String::from_utf8_lossy(buf))),
    }
});
