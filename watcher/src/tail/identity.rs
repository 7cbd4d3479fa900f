//! File identity: which file a checkpoint offset belongs to.
//!
//! A path alone is not enough: the agent CLI may rewrite a transcript in place
//! (truncate + write back) or replace it by rename (new inode). (device, inode)
//! catches replacement; a hash of the first bytes catches an in-place rewrite
//! that kept the inode.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How many leading bytes the fingerprint covers once the file is that long.
pub const FINGERPRINT_BYTES: usize = 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub inode: u64,
    /// Hex SHA-256 of the first `fingerprint_len` bytes.
    pub fingerprint: String,
    /// Bytes covered (≤ `FINGERPRINT_BYTES`; shorter while the file is small).
    pub fingerprint_len: u64,
}

impl FileIdentity {
    /// Reads the identity of the file at `path` now.
    pub fn of(path: &Path) -> std::io::Result<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        let (mut f, meta) = match super::open::open_regular(path)? {
            super::open::Opened::File(f, m) => (f, m),
            super::open::Opened::NotRegular => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file",
                ))
            }
        };
        let mut head = Vec::with_capacity(FINGERPRINT_BYTES);
        (&mut f)
            .take(FINGERPRINT_BYTES as u64)
            .read_to_end(&mut head)?;
        Ok(FileIdentity {
            dev: meta.dev(),
            inode: meta.ino(),
            fingerprint: fingerprint(&head),
            fingerprint_len: head.len() as u64,
        })
    }

    /// Whether `current` (read now) is the same file this identity was taken
    /// of: same (device, inode) and the same leading bytes, compared over the
    /// shorter of the two prefixes.
    pub fn same_file(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(super::open::Opened::File(mut f, meta)) = super::open::open_regular(path) else {
            return false;
        };
        if meta.dev() != self.dev || meta.ino() != self.inode {
            return false;
        }
        let mut head = Vec::with_capacity(self.fingerprint_len as usize);
        if (&mut f)
            .take(self.fingerprint_len)
            .read_to_end(&mut head)
            .is_err()
        {
            return false;
        }
        head.len() as u64 == self.fingerprint_len && fingerprint(&head) == self.fingerprint
    }
}

/// Hex SHA-256 of `bytes`.
pub fn fingerprint(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rewrite_in_place_and_replacement_are_different_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        std::fs::write(&p, b"{\"a\":1}\n").unwrap();
        let id = FileIdentity::of(&p).unwrap();
        assert!(id.same_file(&p));
        // Appending keeps the identity.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"b\":2}\n")
            .unwrap();
        assert!(id.same_file(&p));
        // Rewriting the first bytes in place does not.
        std::fs::write(&p, b"{\"x\":9}\n").unwrap();
        assert!(!id.same_file(&p));
        // Nor does a new file renamed over the path.
        let id = FileIdentity::of(&p).unwrap();
        let q = dir.path().join("tmp");
        std::fs::write(&q, b"{\"x\":9}\n").unwrap();
        std::fs::rename(&q, &p).unwrap();
        assert!(!id.same_file(&p));
        assert!(!id.same_file(&dir.path().join("missing")));
    }
}
