//! The `file` positions backend (SPEC §4.4): versioned JSON, replaced atomically.
//!
//! A write goes to `<path>.tmp`, is fsynced, renamed over `<path>`, and the directory is fsynced:
//! a crash at any point leaves either the old file or the new one, never a torn one. A torn
//! `.tmp` left by a crash is ignored (and overwritten by the next write). A file that exists but
//! cannot be read or parsed is an error naming it — the relay refuses to start over silently,
//! which would re-send every log it can still read.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Stored;
use super::record::Record;
use crate::target::TargetId;

/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// Errors of the file backend; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(
        "cannot read the positions file {path}: {source} (fix its permissions, or move it away to start over)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the positions file {path} is corrupt: {reason} (restore it, or move it away to start over: every target would then start per tail.start_from)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write the positions file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: u32,
    positions: Vec<Record>,
}

/// Reads the positions at `path`; a missing file is an empty table.
pub fn load(path: &Path) -> Result<BTreeMap<TargetId, Stored>, FileError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(FileError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |reason: String| FileError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let doc: Document = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    if doc.version != VERSION {
        return Err(corrupt(format!(
            "version {} is not supported by this build (it reads version {VERSION})",
            doc.version
        )));
    }
    Ok(doc.positions.into_iter().map(Record::into_entry).collect())
}

/// Writes `entries` to `path` atomically (temp file, fsync, rename, directory fsync).
pub fn save(path: &Path, entries: &BTreeMap<TargetId, Stored>) -> Result<(), FileError> {
    let doc = Document {
        version: VERSION,
        positions: entries.iter().map(|(id, s)| Record::of(id, s)).collect(),
    };
    let write_err = |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let body = serde_json::to_vec_pretty(&doc).map_err(|e| write_err(std::io::Error::other(e)))?;
    let tmp = temp_path(path);
    let mut f = std::fs::File::create(&tmp).map_err(write_err)?;
    f.write_all(&body).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(write_err)?;
    // The rename is durable only once the directory entry is.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err)?;
    }
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::{Cursor, Position};
    use jiff::Timestamp;

    fn sample() -> BTreeMap<TargetId, Stored> {
        let id = TargetId {
            namespace: "ns".into(),
            pod: "web-1".into(),
            container: "app".into(),
            uid: "u1".into(),
        };
        let position = Position {
            container_id: Some("containerd://abc".into()),
            cursor: Cursor {
                since: 1_764_000_000,
                skip: 7,
            },
        };
        BTreeMap::from([(
            id,
            Stored {
                position,
                updated: Timestamp::from_second(1_764_000_001).unwrap(),
            },
        )])
    }

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("positions.json");
        assert!(
            load(&path).unwrap().is_empty(),
            "a missing file is an empty table"
        );
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), sample());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"version\": 1") && text.contains("\"skip\": 7"),
            "{text}"
        );
    }

    #[test]
    fn a_torn_temp_file_never_replaces_a_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("positions.json");
        save(&path, &sample()).unwrap();
        // A crash in the middle of the next write leaves a torn temp file behind.
        std::fs::write(temp_path(&path), b"{\"version\": 1, \"positi").unwrap();
        assert_eq!(
            load(&path).unwrap(),
            sample(),
            "the good file is still the one read"
        );
        // The next write replaces the torn temp file and then the good file.
        let mut newer = sample();
        newer.values_mut().for_each(|s| s.position.cursor.skip = 8);
        save(&path, &newer).unwrap();
        assert_eq!(load(&path).unwrap(), newer);
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("positions.json");
        std::fs::write(&path, b"{not json").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("corrupt"),
            "{e}"
        );

        std::fs::write(&path, br#"{"version": 9, "positions": []}"#).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }

    #[test]
    fn an_unreadable_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be cannot be read as one.
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&dir.path().display().to_string()) && e.contains("cannot read"),
            "{e}"
        );
    }
}
