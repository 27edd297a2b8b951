//! Fuzzes the /proc/PID file parsers (stat, status, io, schedstat, limits, smaps_rollup): any bytes give
//! a value or an error, never a panic or an arithmetic overflow. The first byte picks the parser.
#![no_main]

use vitals::probe::procfs;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, buf)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => drop(procfs::parse_stat(buf)),
        1 => drop(procfs::parse_status(buf)),
        2 => drop(procfs::parse_io(buf)),
        3 => drop(procfs::parse_schedstat(buf)),
        4 => drop(procfs::parse_limits_max_fds(buf)),
        _ => drop(procfs::parse_smaps_rollup_pss(buf)),
    }
});
