//! The XML reader on arbitrary bytes, and the writer on whatever it read: what is written
//! reads back as the same tree.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plumbline_adapters::fuzzing::check_round_trip(data);
});
