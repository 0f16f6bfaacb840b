//! Reading the configuration file and the files it names (secrets,
//! certificates) without letting a file block or flood the reader.

use std::io::{Error, ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;

/// Reads a file of at most `max_bytes`, refusing anything but a regular
/// file: a FIFO would block the reader until someone writes to it, and a
/// device such as /dev/zero never ends. The file is opened without
/// blocking and checked once open, so a swap for a FIFO after a check
/// cannot block either.
pub(crate) fn read_regular(
    path: impl AsRef<std::path::Path>,
    max_bytes: u64,
) -> std::io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device or directory cannot hold it)",
        ));
    }
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("larger than {max_bytes} bytes"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &std::path::Path) -> &str {
        p.to_str().expect("a UTF-8 path")
    }

    #[test]
    fn only_a_small_regular_file_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "s3cret\n").expect("write");
        assert_eq!(read_regular(path(&ok), 100).expect("read"), b"s3cret\n");

        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 101]).expect("write");
        let err = read_regular(path(&big), 100).expect_err("too big");
        assert!(err.to_string().contains("larger than 100 bytes"), "{err}");

        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let err = read_regular(path(&fifo), 100).expect_err("a FIFO");
        assert!(err.to_string().contains("not a regular file"), "{err}");

        for device in ["/dev/zero", "/dev/null"] {
            let err = read_regular(device, 100).expect_err("a device");
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
        let err = read_regular(path(dir.path()), 100).expect_err("a directory");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
