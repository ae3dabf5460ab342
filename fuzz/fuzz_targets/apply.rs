//! Configuration validation on arbitrary protobuf bytes: an `ApplyRequest`
//! decoded with prost and validated item by item as the control plane's
//! Apply does (`Resource::from_pb`, which every write goes through). It
//! never panics, every problem names a field under `items`, and the error a
//! client is told stays within the API's caps whatever the input: the
//! message (as `grpc-message` encodes it) within `MAX_MESSAGE` bytes before
//! the count of the problems left out, the `BadRequest` detail within
//! `MAX_DETAILS`.
#![no_main]

use prost::Message as _;
use switchyard::pb;
use switchyard::resource::Resource;
use switchyard::validate::{
    Invalid, MAX_BATCH, MAX_DETAILS, MAX_MESSAGE, Violations, header_len as grpc_message_len,
};

/// Checks the caps of what a client is told of `invalid`.
fn check_bounded(invalid: &Invalid) {
    let text = invalid.to_string();
    let (shown, left) = invalid.reported(MAX_MESSAGE, 4);
    assert!(!shown.is_empty(), "no problem reported");
    let tail = match left {
        0 => String::new(),
        1 => "; and 1 more problem".to_owned(),
        n => format!("; and {n} more problems"),
    };
    assert!(text.ends_with(&tail), "{text:?}");
    assert!(
        grpc_message_len(&text) <= MAX_MESSAGE + tail.len(),
        "a message of {} bytes ({} problems): {text:?}",
        grpc_message_len(&text),
        invalid.violations.len()
    );
    // The control plane's detail: each violation's field and reason, and
    // about 6 bytes of protobuf framing.
    let (shown, _) = invalid.reported(MAX_DETAILS, 6);
    let details: usize = shown
        .iter()
        .map(|v| v.field.len() + v.reason.len() + 6)
        .sum();
    assert!(details <= MAX_DETAILS, "details of {details} bytes");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(request) = pb::ApplyRequest::decode(data) else {
        return;
    };
    let mut v = Violations::new();
    if request.items.is_empty() {
        v.push("items", "must have at least one item");
    } else if request.items.len() > MAX_BATCH {
        v.push("items", "too many items");
    }
    for (i, item) in request.items.iter().take(MAX_BATCH).enumerate() {
        let field = format!("items[{i}].resource");
        let Some(resource) = &item.resource else {
            v.push(field, "must be set");
            continue;
        };
        match Resource::from_pb(resource, &field) {
            Ok(parsed) => {
                // What the control plane takes from a valid resource.
                let _ = (parsed.kind(), parsed.reference(), parsed.references());
            }
            Err(invalid) => {
                assert!(!invalid.violations.is_empty());
                for violation in &invalid.violations {
                    assert!(
                        violation.field.starts_with(&field),
                        "{violation} for {field}"
                    );
                }
                v.extend(invalid);
            }
        }
    }
    if let Err(invalid) = v.finish(()) {
        check_bounded(&invalid);
    }
});
