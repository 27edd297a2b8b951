//! Fuzzes the PSI (`cpu.pressure`, `/proc/pressure/*`) parser: any bytes give a value or an error,
//! never a panic or an arithmetic overflow.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vitals::probe::pressure::parse_pressure(data);
});
