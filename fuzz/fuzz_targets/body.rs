//! The HTTP/1 body decoder (chunked, length, to the close) on arbitrary
//! bytes: no panic, the same body and the same bytes left after it on any
//! split, and chunked bodies that round-trip through the proxy's encoder
//! (see `switchyard_proxy::fuzzing::body`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_proxy::fuzzing::body(data));
