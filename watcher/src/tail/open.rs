//! Opening a path the agent can create without ever blocking on it.
//!
//! The agent shares the transcript volume: a FIFO (or a device) at a path the
//! watcher opens would block a plain `open(O_RDONLY)` until a writer appears,
//! wedging ingest and with it shutdown. Every transcript, subagent and meta
//! file is therefore opened with `O_NONBLOCK` (which makes `open` on a FIFO
//! return at once and changes nothing for a regular file), and the descriptor
//! is kept only when `fstat` says it is a regular file.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The `reason` reported for a path that is not a regular file.
pub const NOT_REGULAR: &str = "not_regular_file";

/// What [`open_regular`] found.
#[derive(Debug)]
pub enum Opened {
    /// A regular file, open for reading, with its metadata from `fstat`.
    File(File, Metadata),
    /// Something else (FIFO, socket, device, directory): not opened further.
    NotRegular,
}

/// Opens `path` for reading without blocking, keeping it only when it is a
/// regular file. Symlinks are followed (a configured `TRANSCRIPT_PATH` may be
/// one); the type that counts is the target's, checked on the descriptor.
pub fn open_regular(path: &Path) -> io::Result<Opened> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
    {
        Ok(f) => f,
        // `O_NONBLOCK` on a FIFO without a writer opens fine for reading; a
        // device may refuse. Either way it is not a transcript.
        Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => return Ok(Opened::NotRegular),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Opened::NotRegular);
    }
    Ok(Opened::File(file, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_reported_without_blocking_and_a_file_opens() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("agent-x.jsonl");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // A plain `File::open` would block here forever (no writer).
        assert!(matches!(open_regular(&fifo).unwrap(), Opened::NotRegular));
        assert!(matches!(
            open_regular(dir.path()).unwrap(),
            Opened::NotRegular
        ));
        let file = dir.path().join("s.jsonl");
        std::fs::write(&file, b"{}\n").unwrap();
        assert!(matches!(open_regular(&file).unwrap(), Opened::File(..)));
        let missing = open_regular(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
