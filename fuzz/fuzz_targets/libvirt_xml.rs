//! A domain's XML description and its `<metadata>` records of originals, as libvirt hands
//! them back (anyone with access to the domain can edit them).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(xml) = std::str::from_utf8(data) {
        plumbline_adapters::fuzzing::read_any_domain_xml(xml);
    }
});
