use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;

use super::*;
use crate::testing::{service, snapshot, web};

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "switchyard-agent-persist-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn missing_file_loads_as_nothing() {
    let dir = TempDir::new();
    assert_eq!(load(&dir.0).unwrap(), None);
}

#[test]
fn round_trip() {
    let dir = TempDir::new();
    let saved = web(12);
    save(&dir.0, &saved.encode_to_vec()).unwrap();
    assert_eq!(load(&dir.0).unwrap(), Some(saved));
}

#[test]
fn save_replaces_atomically_and_leaves_no_temporary_file() {
    let dir = TempDir::new();
    save(&dir.0, &web(1).encode_to_vec()).unwrap();
    let newer = snapshot(2, [service("api", 2)]);
    save(&dir.0, &newer.encode_to_vec()).unwrap();
    assert_eq!(load(&dir.0).unwrap(), Some(newer));
    let files: Vec<_> = fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, [FILE]);
}

#[test]
fn a_stale_temporary_file_does_not_matter() {
    // A crash between writing the temporary file and renaming it leaves the
    // old configuration in place.
    let dir = TempDir::new();
    save(&dir.0, &web(1).encode_to_vec()).unwrap();
    fs::write(dir.0.join(format!(".{FILE}.1.tmp")), b"half written").unwrap();
    assert_eq!(load(&dir.0).unwrap().unwrap().revision, 1);
    save(&dir.0, &web(2).encode_to_vec()).unwrap();
    assert_eq!(load(&dir.0).unwrap().unwrap().revision, 2);
}

#[test]
fn corrupt_file_is_an_error_naming_it() {
    let dir = TempDir::new();
    fs::write(path(&dir.0), [0xff, 0xff, 0xff, 0xff]).unwrap();
    let err = load(&dir.0).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("config.pb"), "{err}");
}

#[test]
fn save_into_a_missing_directory_fails() {
    let dir = TempDir::new();
    let missing = dir.0.join("nope");
    assert!(save(&missing, &web(1).encode_to_vec()).is_err());
    assert!(!missing.exists());
}

#[test]
fn dump_lists_revision_and_resources() {
    let dir = TempDir::new();
    let mut out = Vec::new();
    dump(&dir.0, &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "revision 0\n");

    save(&dir.0, &web(4).encode_to_vec()).unwrap();
    let mut out = Vec::new();
    dump(&dir.0, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "revision 4\n\
         service/web revision 4\n\
         endpoint/web-1 revision 4\n\
         route/web revision 4\n\
         listener/web revision 4\n"
    );
}
