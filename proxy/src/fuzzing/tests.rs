//! The fuzz targets' seed inputs, and every input the fuzzers found
//! breaking a check, run through the checks as ordinary tests.

use std::path::PathBuf;

use super::*;

/// The inputs committed in `fuzz/corpus/<target>/`.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a corpus entry").path();
            let bytes = std::fs::read(&path).expect("a corpus file");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no seed inputs in {}", dir.display());
    inputs
}

#[test]
fn the_seed_request_heads_pass_the_checks() {
    let mut accepted = 0;
    for (_, bytes) in corpus("request_head") {
        request_head(&bytes);
        accepted += usize::from(matches!(parse(&bytes), Ok(Some(_))));
    }
    assert!(accepted >= 5, "only {accepted} seed heads are valid");
}

#[test]
fn the_seed_bodies_pass_the_checks() {
    for (_, bytes) in corpus("body") {
        body(&bytes);
    }
}

/// A chunk-size line longer than the decoder's limit (4 KiB) was refused
/// when it came in several reads, but accepted when its end came in the
/// same read as its start.
#[test]
fn a_chunk_line_over_the_limit_is_refused_however_it_arrives() {
    let mut input = vec![0u8]; // chunked, in reads of 1 byte
    input.extend_from_slice(b"5;");
    input.extend_from_slice(&b"a".repeat(5000));
    input.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    body(&input);
    let mut input = vec![0u8];
    input.extend_from_slice(b"0\r\nx-trailer: ");
    input.extend_from_slice(&b"a".repeat(5000));
    input.extend_from_slice(b"\r\n\r\n");
    body(&input);
}
