//! Which file is in force, per family: `STATE_ROOT/<family>/source.json`
//! records the file an apply came from, the SHA-256 of the bytes that were
//! applied, the generation the apply handed out and who applied it (the CLI
//! or the agent). It is a cache like every file in /run: it counts only
//! while its generation is the one the kernel runs ([`in_force`]); anything
//! else (missing, damaged, another generation) means "unknown", and the
//! agent then applies its file again (an apply is atomic and keeps
//! connections, so doing it once too often costs nothing but time).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{fw::state::Paths, sys};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    pub sha256: String,
    pub generation: u32,
    pub applied_unix: u64,
    /// "cli" or "daemon (pid N)".
    pub by: String,
}

/// Hex SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn path(p: &Paths) -> PathBuf {
    p.state_dir.join("source.json")
}

/// Records what was applied (atomically: a temporary file renamed into
/// place, mode 0600 in the family's 0700 state directory).
pub fn write(p: &Paths, s: &Source) -> Result<()> {
    sys::private_dir(&p.state_dir)?;
    let text = serde_json::to_string_pretty(s)?;
    sys::write_private_atomic(&path(p), text.as_bytes())
}

/// Largest config file read for a digest (the policy reader's own limit).
pub const MAX_FILE: u64 = 16 << 20;

/// The bytes of `path` if it is a regular file of at most [`MAX_FILE`]
/// bytes. Opened non-blocking and checked on the open descriptor, so a FIFO
/// or device put in its place cannot stall the caller.
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if m.len() > MAX_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {} MiB", MAX_FILE >> 20),
        ));
    }
    let mut out = Vec::with_capacity(m.len() as usize);
    f.take(MAX_FILE + 1).read_to_end(&mut out)?;
    Ok(out)
}

/// Records an apply of `file` (its bytes as read before the apply).
pub fn record(p: &Paths, file: &Path, bytes: &[u8], generation: u32, by: &str) -> Result<()> {
    write(
        p,
        &Source {
            file: fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf()),
            sha256: digest(bytes),
            generation,
            applied_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            by: by.into(),
        },
    )
}

/// The record as written, if readable.
pub fn read(p: &Paths) -> Option<Source> {
    serde_json::from_str(&fs::read_to_string(path(p)).ok()?).ok()
}

/// The generation the kernel runs for the family at `p` (firewall: every
/// pinned link runs the same one; load balancer: the live config's).
pub fn kernel_generation(p: &Paths) -> Option<u32> {
    if p.what() == "the load balancer" {
        if crate::lb::status::links(p).is_empty() {
            return None;
        }
        return crate::lb::status::live_config(p).map(|c| c.generation);
    }
    let k = crate::fw::state::Kernel::read(p, |_| None);
    match k.generations().as_slice() {
        [g] => Some(*g),
        _ => None,
    }
}

/// The record, when it describes what the kernel runs now.
pub fn in_force(p: &Paths) -> Option<Source> {
    let s = read(p)?;
    (kernel_generation(p) == Some(s.generation)).then_some(s)
}
