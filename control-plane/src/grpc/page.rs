//! `List` page tokens: opaque to clients, bound to the request that issued
//! them.
//!
//! A token is the URL-safe base64 (no padding) of a small versioned record:
//! the format version, the kind listed, a hash of the label selector (in
//! its normalised form, so `a=b` and ` a = b ` are one selector) and the
//! name of the last resource of the page. The name is a position, not a
//! secret: a client that forges a token can only start a listing at
//! another place, which it may do anyway. What the binding buys is that a
//! token used with another kind or selector — a client bug that would
//! silently skip or repeat resources — is refused, and that the format can
//! change (a new version) without old clients misreading it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use switchyard::label::Selector;
use switchyard::resource::Kind;

/// The current token format.
const VERSION: u8 = 1;
/// Bytes of the selector hash kept in a token.
const HASH_LEN: usize = 8;
/// Version, kind, selector hash.
const HEADER_LEN: usize = 2 + HASH_LEN;
/// Largest token accepted: a header and a longest name, in base64.
const MAX_TOKEN_LEN: usize = (HEADER_LEN + switchyard::validate::MAX_NAME_LEN).div_ceil(3) * 4;

/// Why a page token was refused; each reads after "page_token: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a token this API issued (garbage, truncated, a bare name).
    #[error(
        "is not a page token issued by this API: pass the next_page_token of the previous page unchanged"
    )]
    Malformed,
    /// Issued by a newer or older format.
    #[error(
        "was issued in token format {0}, which this control plane does not read: list again from the first page"
    )]
    Version(u8),
    /// Issued for another kind.
    #[error(
        "was issued for a List of kind {issued}, not {asked}: list {asked} again from the first page"
    )]
    Kind {
        /// The kind of the request that issued it.
        issued: &'static str,
        /// The kind of this request.
        asked: Kind,
    },
    /// Issued for another label selector.
    #[error(
        "was issued for another label_selector: pass the same label_selector on every page, or list again from the first page"
    )]
    Selector,
}

fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Service => 1,
        Kind::Endpoint => 2,
        Kind::Route => 3,
        Kind::Listener => 4,
    }
}

fn kind_of(byte: u8) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| kind_byte(*k) == byte)
}

fn selector_hash(selector: &Selector) -> [u8; HASH_LEN] {
    let digest = Sha256::digest(selector.to_string().as_bytes());
    let mut out = [0; HASH_LEN];
    out.copy_from_slice(&digest[..HASH_LEN]);
    out
}

/// The token for the page after the resource named `last`.
pub fn encode(kind: Kind, selector: &Selector, last: &str) -> String {
    let mut raw = Vec::with_capacity(HEADER_LEN + last.len());
    raw.push(VERSION);
    raw.push(kind_byte(kind));
    raw.extend_from_slice(&selector_hash(selector));
    raw.extend_from_slice(last.as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

/// The name after which the page of `token` starts, if `token` was issued
/// by a List of `kind` with `selector`.
pub fn decode(token: &str, kind: Kind, selector: &Selector) -> Result<String, Error> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Error::Malformed);
    }
    let raw = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| Error::Malformed)?;
    if raw.len() <= HEADER_LEN {
        return Err(Error::Malformed);
    }
    if raw[0] != VERSION {
        return Err(Error::Version(raw[0]));
    }
    let issued = kind_of(raw[1]).ok_or(Error::Malformed)?;
    if issued != kind {
        return Err(Error::Kind {
            issued: issued.as_str(),
            asked: kind,
        });
    }
    if raw[2..HEADER_LEN] != selector_hash(selector) {
        return Err(Error::Selector);
    }
    let name = String::from_utf8(raw[HEADER_LEN..].to_vec()).map_err(|_| Error::Malformed)?;
    let mut v = switchyard::validate::Violations::new();
    switchyard::validate::name(&mut v, "", &name);
    if !v.is_empty() {
        return Err(Error::Malformed);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bindings() {
        let sel = Selector::parse("team=a").unwrap();
        let token = encode(Kind::Service, &sel, "svc-04");
        assert!(!token.contains("svc-04"), "opaque: {token}");
        assert_eq!(decode(&token, Kind::Service, &sel).unwrap(), "svc-04");
        // The selector in another spelling is the same selector.
        let same = Selector::parse(" team = a ").unwrap();
        assert_eq!(decode(&token, Kind::Service, &same).unwrap(), "svc-04");
        assert!(matches!(
            decode(&token, Kind::Endpoint, &sel),
            Err(Error::Kind {
                issued: "service",
                asked: Kind::Endpoint
            })
        ));
        let other = Selector::parse("team=b").unwrap();
        assert_eq!(decode(&token, Kind::Service, &other), Err(Error::Selector));
        assert_eq!(
            decode(&token, Kind::Service, &Selector::default()),
            Err(Error::Selector)
        );
        for garbage in ["svc-04", "!!!", "", "AQ", &"A".repeat(10_000)] {
            assert_eq!(
                decode(garbage, Kind::Service, &sel),
                Err(Error::Malformed),
                "{garbage:.20}"
            );
        }
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        raw[0] = 9;
        assert_eq!(
            decode(&URL_SAFE_NO_PAD.encode(raw), Kind::Service, &sel),
            Err(Error::Version(9))
        );
    }
}
