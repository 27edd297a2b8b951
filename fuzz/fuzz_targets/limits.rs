//! Fuzzes the /proc/PID/limits parser (the soft "Max open files" limit): any bytes give a limit, "unlimited"
//! or an error, never a panic or an arithmetic overflow; a limit found is the number the line carries.
#![no_main]

use vitals::probe::procfs::parse_limits_max_fds;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(Some(n)) = parse_limits_max_fds(data) {
        let text = std::str::from_utf8(data).expect("a parsed limit came from UTF-8");
        assert!(text.contains(&n.to_string()), "{n} not in {text:?}");
    }
});
