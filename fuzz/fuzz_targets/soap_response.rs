//! A vim25 response body from a server we do not control: the SOAP envelope, faults,
//! property-collector pages, performance counters and samples. Must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plumbline_adapters::fuzzing::read_any_response(data);
});
