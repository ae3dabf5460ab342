//! The HTTP/1 request head parser on arbitrary bytes: no panic, the same
//! head on any split of the bytes, and what it accepts written again as the
//! proxy sends it upstream parses back the same (see
//! `switchyard_proxy::fuzzing::request_head`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_proxy::fuzzing::request_head(data));
