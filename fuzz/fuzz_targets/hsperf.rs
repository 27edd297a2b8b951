//! Fuzzes the JVM hsperfdata parser: any bytes give a sample or an error, never a panic or a hang.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vitals::probe::hsperf::sample(data);
});
