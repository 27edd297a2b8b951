//! Fuzzes the in-place trace reader against prost: on every input, prost decodes it exactly when the
//! view accepts it, and when both do, the fields the trace consumers read and what the consumers make
//! of them are the same (`tests/differential/trace_view.rs`, shared with the differential test).
#![no_main]

#[path = "../../tests/differential/trace_view.rs"]
mod differential;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    differential::check(data);
});
