//! Writing a file around the page cache (`O_DIRECT`), for bytes that are written once and
//! not read again soon: copies of other sites' instances.
//!
//! A grid re-replicating a lost site writes terabytes that nobody reads that day. Through
//! the page cache they would push the working set (the studies being read now) out of
//! memory, and every byte would first be copied into freshly allocated cache pages, which
//! on virtual machines costs several times what the disk write does (measured in
//! bench/README.md, "Replica copies written around the page cache"). Direct writes go from
//! one block-aligned buffer straight to the device.
//!
//! `O_DIRECT` wants the buffer, the length and the file offset aligned to the device's
//! block size. Whole [`ALIGN`]-sized blocks are written directly; the last partial block is
//! written through the page cache when the file is finished. Where the OS or the file
//! system refuses direct I/O (tmpfs before Linux 6.6, some network file systems, not
//! Linux), every write goes through the page cache, as before.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// Alignment of the buffer, of every direct write's length and of its file offset: a
/// multiple of every logical block size in use (512 or 4096 bytes).
pub const ALIGN: usize = 4096;

/// Most bytes gathered before a direct write.
const CAPACITY: usize = 1 << 20;

/// A file being written, directly where the system allows it.
pub struct DirectWriter {
    file: File,
    direct: bool,
    /// Backing storage; the aligned window `[start, start + cap)` is the buffer.
    storage: Vec<u8>,
    start: usize,
    cap: usize,
    filled: usize,
}

impl DirectWriter {
    /// Creates `path` (it must not exist) to be written from its start; `direct: false`
    /// writes through the page cache (for files that are read again at once). `size_hint`,
    /// the expected size, keeps the buffer no larger than needed for small files.
    pub fn create_new(path: &Path, size_hint: u64, direct: bool) -> std::io::Result<DirectWriter> {
        let (file, direct) = open(path, true, direct)?;
        Ok(DirectWriter::new(file, direct, size_hint))
    }

    /// Opens the existing file `path`, whose first `len` bytes are kept, to be written from
    /// byte `len` on. `len` must be a multiple of [`ALIGN`] (see [`aligned_down`]), or the
    /// file is written through the page cache, as it is with `direct: false`.
    pub fn append(
        path: &Path,
        len: u64,
        size_hint: u64,
        direct: bool,
    ) -> std::io::Result<DirectWriter> {
        let (mut file, direct) = open(path, false, direct && len.is_multiple_of(ALIGN as u64))?;
        file.set_len(len)?;
        file.seek(SeekFrom::Start(len))?;
        Ok(DirectWriter::new(
            file,
            direct,
            size_hint.saturating_sub(len),
        ))
    }

    fn new(file: File, direct: bool, size_hint: u64) -> DirectWriter {
        let (cap, storage, start) = if direct {
            let want = usize::try_from(size_hint).unwrap_or(CAPACITY);
            let cap = want.clamp(ALIGN, CAPACITY).next_multiple_of(ALIGN);
            // One allocation, never grown: `start` stays the first aligned byte of it.
            let storage = vec![0u8; cap + ALIGN];
            let start = storage.as_ptr().align_offset(ALIGN);
            (cap, storage, start)
        } else {
            (0, Vec::new(), 0)
        };
        DirectWriter {
            file,
            direct,
            storage,
            start,
            cap,
            filled: 0,
        }
    }

    /// Whether whole blocks go around the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Appends `data`.
    pub fn write_all(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        if !self.direct {
            return self.file.write_all(data);
        }
        while !data.is_empty() {
            let n = data.len().min(self.cap - self.filled);
            let at = self.start + self.filled;
            self.storage[at..at + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == self.cap {
                self.flush_blocks()?;
            }
        }
        Ok(())
    }

    /// Writes the whole blocks gathered, keeping a partial last block in the buffer.
    fn flush_blocks(&mut self) -> std::io::Result<()> {
        let whole = aligned_down(self.filled as u64) as usize;
        if whole == 0 {
            return Ok(());
        }
        match self
            .file
            .write_all(&self.storage[self.start..self.start + whole])
        {
            Ok(()) => {}
            // A device with larger blocks than ALIGN, or a file system that takes the open but
            // not the write: nothing was written, so the bytes go through the page cache.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => return self.leave_direct(),
            Err(e) => return Err(e),
        }
        self.storage
            .copy_within(self.start + whole..self.start + self.filled, self.start);
        self.filled -= whole;
        Ok(())
    }

    /// Turns direct I/O off for the rest of the file, writing what the buffer holds.
    fn leave_direct(&mut self) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let flags = rustix::fs::fcntl_getfl(&self.file)?;
            rustix::fs::fcntl_setfl(&self.file, flags - rustix::fs::OFlags::DIRECT)?;
        }
        self.direct = false;
        let held = std::mem::take(&mut self.filled);
        self.file
            .write_all(&self.storage[self.start..self.start + held])
    }

    /// Drops every byte written so far: the file is empty again.
    pub fn truncate(&mut self) -> std::io::Result<()> {
        self.filled = 0;
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        Ok(())
    }

    /// Writes what is left, fsyncs the file and returns it: its bytes are durable.
    pub fn finish(mut self) -> std::io::Result<File> {
        if self.direct {
            self.flush_blocks()?;
            if self.filled > 0 {
                // the last partial block cannot be written directly
                self.leave_direct()?;
            }
        }
        self.file.sync_all()?;
        Ok(self.file)
    }
}

/// `n` rounded down to a multiple of [`ALIGN`].
pub fn aligned_down(n: u64) -> u64 {
    n - n % ALIGN as u64
}

/// Opens `path` for writing (creating it, when `create_new`, where nothing may exist yet),
/// with `O_DIRECT` if `direct` and the file system takes it; says whether it did.
fn open(path: &Path, create_new: bool, direct: bool) -> std::io::Result<(File, bool)> {
    let open = |direct: bool| {
        let mut o = OpenOptions::new();
        o.write(true).create_new(create_new);
        set_direct(&mut o, direct);
        o.open(path)
    };
    match open(direct) {
        Ok(f) => Ok((f, direct && cfg!(target_os = "linux"))),
        // EINVAL: the file system does not do direct I/O; the failed open created nothing
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok((open(false)?, false)),
        Err(e) => Err(e),
    }
}

#[cfg(target_os = "linux")]
fn set_direct(o: &mut OpenOptions, direct: bool) {
    use std::os::unix::fs::OpenOptionsExt;
    if direct {
        o.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
    }
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_: &mut OpenOptions, _: bool) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Writes `data` in pieces of `piece` bytes.
    fn write_in_pieces(w: &mut DirectWriter, data: &[u8], piece: usize) {
        for c in data.chunks(piece) {
            w.write_all(c).unwrap();
        }
    }

    /// Finishes `w` and checks the file at `path` holds exactly `data`.
    fn finish_holds(w: DirectWriter, path: &Path, data: &[u8]) {
        w.finish().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), data, "{}", path.display());
    }

    #[test]
    fn files_of_every_shape_hold_exactly_the_bytes_written() {
        let dir = tempfile::tempdir().unwrap();
        for (i, (size, piece)) in [
            (0, 1),
            (1, 1),
            (ALIGN - 1, 1000),
            (ALIGN, ALIGN),
            (ALIGN + 1, 333),
            (CAPACITY, 16384),
            (CAPACITY + 5, 16384),
            (3 * CAPACITY + 12345, 65536 + 3),
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.path().join(format!("f{i}"));
            let data = pattern(size);
            // a hint smaller than the file must not matter
            let mut w = DirectWriter::create_new(&path, (size / 2) as u64, true).unwrap();
            write_in_pieces(&mut w, &data, piece);
            finish_holds(w, &path, &data);
        }
    }

    #[test]
    fn direct_false_writes_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let data = pattern(ALIGN * 2 + 3);
        let mut w = DirectWriter::create_new(&path, 0, false).unwrap();
        assert!(!w.is_direct());
        write_in_pieces(&mut w, &data, 1000);
        finish_holds(w, &path, &data);
    }

    #[test]
    fn append_keeps_the_prefix_and_goes_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let data = pattern(2 * CAPACITY + 999);
        let mut w = DirectWriter::create_new(&path, data.len() as u64, true).unwrap();
        w.write_all(&data[..CAPACITY + 100]).unwrap();
        drop(w); // cut off: only whole blocks reached the file when it was direct
        let have = std::fs::metadata(&path).unwrap().len();
        assert!(have <= (CAPACITY + 100) as u64);
        assert_eq!(std::fs::read(&path).unwrap(), data[..have as usize]);
        let keep = aligned_down(have);
        let mut w = DirectWriter::append(&path, keep, data.len() as u64, true).unwrap();
        w.write_all(&data[keep as usize..]).unwrap();
        finish_holds(w, &path, &data);
    }

    #[test]
    fn append_at_an_unaligned_length_goes_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u");
        let data = pattern(3 * ALIGN);
        std::fs::write(&path, &data[..ALIGN + 7]).unwrap();
        let mut w =
            DirectWriter::append(&path, (ALIGN + 7) as u64, data.len() as u64, true).unwrap();
        assert!(!w.is_direct());
        w.write_all(&data[ALIGN + 7..]).unwrap();
        finish_holds(w, &path, &data);
    }

    #[test]
    fn truncate_starts_the_file_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let mut w = DirectWriter::create_new(&path, 0, true).unwrap();
        w.write_all(&pattern(CAPACITY + 3)).unwrap();
        w.truncate().unwrap();
        let data = pattern(ALIGN * 3 + 1);
        w.write_all(&data).unwrap();
        finish_holds(w, &path, &data);
    }

    #[test]
    fn leaving_direct_mode_midway_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let data = pattern(2 * CAPACITY + 10);
        let mut w = DirectWriter::create_new(&path, data.len() as u64, true).unwrap();
        w.write_all(&data[..CAPACITY + 5]).unwrap();
        w.leave_direct().unwrap();
        w.write_all(&data[CAPACITY + 5..]).unwrap();
        finish_holds(w, &path, &data);
    }
}
