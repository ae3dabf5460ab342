//! The last applied configuration on disk, so that a restarted agent serves
//! it before (or without) reaching a control plane.
//!
//! The file is `DATA_DIR/config.pb`, an encoded `switchyard.v1.Snapshot`.
//! It is replaced atomically: written to a temporary file in the same
//! directory, flushed to disk, renamed over the old one, and the directory
//! flushed, so a crash at any point leaves either the old file or the new
//! one, never a mix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use switchyard::pb;
use switchyard::resource::Kind;

/// Name of the file in the data directory.
pub const FILE: &str = "config.pb";

/// Why a saved configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file exists but could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not an encoded Snapshot.
    #[error("decoding {path}: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: prost::DecodeError,
    },
}

/// The path of the saved configuration in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Replaces the saved configuration in `dir` with `snapshot`, an encoded
/// Snapshot, atomically.
pub fn save(dir: &Path, snapshot: &[u8]) -> io::Result<()> {
    // The process id keeps two agents wrongly sharing a directory from
    // writing into each other's temporary file.
    let tmp = dir.join(format!(".{FILE}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(snapshot)?;
        file.sync_all()?;
        fs::rename(&tmp, path(dir))?;
        // The rename is durable only once the directory entry is.
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Name of the file holding the agent's instance id in the data directory.
pub const INSTANCE_FILE: &str = "instance";

/// This agent's instance id (`pb::Hello::instance_id`): read from
/// `DATA_DIR/instance`, or made up (random) and written there when the file
/// is missing or not an id. Kept on disk so that an agent restarted on the
/// same node, with the same data directory, is the same instance: its new
/// stream replaces its old one at once, even if the old one still looks
/// live (e.g. its control plane was killed too). Another agent with the same
/// node id but its own data directory is another instance. When the file
/// cannot be written the id holds for this process only.
pub fn instance_id(dir: &Path) -> String {
    let path = dir.join(INSTANCE_FILE);
    if let Ok(text) = fs::read_to_string(&path) {
        let id = text.trim();
        if (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return id.to_owned();
        }
    }
    let id = random_id();
    if let Err(error) = fs::write(&path, format!("{id}\n")) {
        tracing::warn!(path = %path.display(), %error, "cannot keep the agent's instance id; a restart will use a new one");
    }
    id
}

/// 64 random bits in hex: std's hasher keys come from the operating
/// system's randomness, mixed with the process id and the time.
fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}", hasher.finish())
}

/// Reads the saved configuration in `dir`; `None` when there is none.
pub fn load(dir: &Path) -> Result<Option<pb::Snapshot>, Error> {
    let path = path(dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Read { path, source }),
    };
    pb::Snapshot::decode(bytes.as_slice())
        .map(Some)
        .map_err(|source| Error::Corrupt { path, source })
}

/// Writes a listing of the saved configuration in `dir` to `out`: a
/// `revision N` line, then `kind/name revision N` per resource, by kind then
/// name. Nothing saved reads as revision 0.
pub fn dump(dir: &Path, out: &mut dyn Write) -> Result<(), DumpError> {
    let snapshot = load(dir)?.unwrap_or_default();
    writeln!(out, "revision {}", snapshot.revision)?;
    let mut lines: Vec<(Kind, &str, u64)> = Vec::new();
    lines.extend((snapshot.services.iter()).map(|s| (Kind::Service, s.name.as_str(), s.revision)));
    lines
        .extend((snapshot.endpoints.iter()).map(|e| (Kind::Endpoint, e.name.as_str(), e.revision)));
    lines.extend((snapshot.routes.iter()).map(|r| (Kind::Route, r.name.as_str(), r.revision)));
    lines
        .extend((snapshot.listeners.iter()).map(|l| (Kind::Listener, l.name.as_str(), l.revision)));
    lines.sort();
    for (kind, name, revision) in lines {
        writeln!(out, "{kind}/{name} revision {revision}")?;
    }
    Ok(())
}

/// Why [`dump`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The saved configuration could not be read.
    #[error(transparent)]
    Load(#[from] Error),
    /// The listing could not be written.
    #[error("writing the listing: {0}")]
    Write(#[from] io::Error),
}

#[cfg(test)]
mod tests;
