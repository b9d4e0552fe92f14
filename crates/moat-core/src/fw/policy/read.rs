//! Reading policy and set files safely: regular files only (opened
//! non-blocking and checked on the fd), size caps, UTF-8 without NUL bytes,
//! errors located by line and column.

use std::path::Path;

/// Reads a policy or set file: a regular file (a FIFO would hang, a device
/// like /dev/zero never ends) of at most `max` bytes, as UTF-8 text without
/// NUL bytes (errors name the line and column of the first bad byte).
pub fn read_text(path: &Path, what: &str, max: u64) -> Result<String, (usize, usize, String)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO must not wait for a writer; the type is
    // checked on the opened file, so it cannot be swapped in between.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nonblock())
        .open(path)
        .map_err(|e| (0, 0, format!("cannot read {what}: {e}")))?;
    let md = f
        .metadata()
        .map_err(|e| (0, 0, format!("cannot read {what}: {e}")))?;
    if !md.is_file() {
        let kind = file_kind(&md);
        return Err((
            0,
            0,
            format!("{what} must be a regular file, this is {kind}"),
        ));
    }
    if md.len() > max {
        return Err((
            0,
            0,
            format!(
                "{what} is {} bytes, more than the limit of {max} bytes",
                md.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| (0, 0, format!("cannot read {what}: {e}")))?;
    if bytes.len() as u64 > max {
        return Err((
            0,
            0,
            format!("{what} grew past the limit of {max} bytes while being read"),
        ));
    }
    let at = |off: usize| {
        let before = &bytes[..off];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        // Column in characters of the valid text before the bad byte.
        let col = String::from_utf8_lossy(&bytes[start..off]).chars().count() + 1;
        (line, col)
    };
    let text = match String::from_utf8(bytes.clone()) {
        Ok(t) => t,
        Err(e) => {
            let off = e.utf8_error().valid_up_to();
            let (l, c) = at(off);
            return Err((
                l,
                c,
                format!("{what} is not UTF-8 text (byte 0x{:02x})", bytes[off]),
            ));
        }
    };
    if let Some(off) = bytes.iter().position(|&b| b == 0) {
        let (l, c) = at(off);
        return Err((l, c, format!("{what} contains a NUL byte")));
    }
    Ok(text)
}

pub(super) fn libc_o_nonblock() -> i32 {
    0o4000 // O_NONBLOCK on Linux
}

#[cfg(test)]
unsafe extern "C" {
    #[link_name = "mkfifo"]
    fn libc_mkfifo_raw(path: *const std::ffi::c_char, mode: u32) -> i32;
}

/// mkfifo(path, 0600), for the tests.
#[cfg(test)]
pub(super) unsafe fn libc_mkfifo(path: *const std::ffi::c_char) -> i32 {
    // SAFETY: the caller passes a valid C string.
    unsafe { libc_mkfifo_raw(path, 0o600) }
}

fn file_kind(md: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}
