//! Large outputs as files: a task whose kept output is more than [`IN_FILE_FROM`] bytes has
//! each non-empty stream in a file of its own, `DIR/TASK_ID.stdout` and `.stderr`, beside the
//! database (`hub.redb` keeps them in `hub.redb.output/`). Smaller outputs stay in the `output`
//! table, in the log's group commit: a file costs two syncs of its own, which a large output's
//! bytes dwarf and a small one's do not.
//!
//! A file is written under a temporary name, synced, renamed into place, and its directory
//! synced, all before the log record that marks the task's output as in files (a `(task, 0,
//! 0)` entry of the `output` table) is written. A file is therefore complete whenever a marker
//! names it, and never changes afterwards (a result stored again has the same output): reads
//! need no lock, and a backup can link it instead of copying it. Files go after the commit
//! that drops their marker (retention, a deleted task), or, for what a crash left (a file
//! written before its commit, an unlink that never happened), at the next start (`sweep`).
//!
//! This keeps large outputs out of redb, which rounds a value up to its allocator's next power
//! of two and reads every page at its integrity check: a start with 100,000 outputs of 64 KiB
//! read 14 GiB before.

use std::io::Write;
use std::path::{Path, PathBuf};

use ulid::Ulid;

use super::codec::Prepared;

/// A task's output goes into files when its streams hold more than this, together.
pub const IN_FILE_FROM: usize = 16 * 1024;

/// The streams, as the `output` table numbers them (0 is the marker), and their files' suffixes.
const STREAMS: [(u8, &str); 2] = [(1, "stdout"), (2, "stderr")];
const PARTIAL: &str = ".partial";

/// The directory of output files beside a database.
#[derive(Clone, Debug)]
pub(super) struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    /// The directory for the database at `database`: its full name plus `.output`.
    pub(super) fn beside(database: &Path) -> Blobs {
        let mut name = database.as_os_str().to_owned();
        name.push(".output");
        Blobs { dir: PathBuf::from(name) }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: u128, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}.{suffix}", Ulid::from(key)))
    }

    /// Writes the streams of each task durably (see the module documentation). On an error
    /// nothing written here stays under a final name it did not have before.
    pub(super) fn write(&self, outputs: &[(u128, &[u8], &[u8])]) -> std::io::Result<()> {
        if outputs.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        let mut placed = Vec::new();
        let written = (|| {
            for &(key, stdout, stderr) in outputs {
                for ((_, suffix), bytes) in STREAMS.iter().zip([stdout, stderr]) {
                    let path = self.path(key, suffix);
                    if bytes.is_empty() {
                        remove(&path)?;
                        continue;
                    }
                    let partial = self.path(key, &format!("{suffix}{PARTIAL}"));
                    let mut file = std::fs::File::create(&partial)?;
                    let synced = file.write_all(bytes).and_then(|()| file.sync_data());
                    if let Err(err) = synced {
                        let _ = std::fs::remove_file(&partial);
                        return Err(err);
                    }
                    std::fs::rename(&partial, &path)?;
                    placed.push(path);
                }
            }
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            for path in placed {
                let _ = std::fs::remove_file(path);
            }
        }
        written
    }

    /// Moves the outputs of more than [`IN_FILE_FROM`] bytes among `ops` into files, leaving an
    /// `OutputInFiles` in their place. Called before the commit that holds `ops`.
    pub(super) fn take_large(&self, ops: &mut [Prepared]) -> std::io::Result<()> {
        let large = |op: &Prepared| matches!(op, Prepared::PutOutput { stdout, stderr, .. } if stdout.len() + stderr.len() > IN_FILE_FROM);
        let outputs: Vec<(u128, &[u8], &[u8])> = ops
            .iter()
            .filter(|op| large(op))
            .filter_map(|op| match op {
                Prepared::PutOutput { key, stdout, stderr } => Some((*key, stdout.as_slice(), stderr.as_slice())),
                _ => None,
            })
            .collect();
        self.write(&outputs)?;
        for op in ops.iter_mut().filter(|op| large(op)) {
            if let Prepared::PutOutput { key, .. } = *op {
                *op = Prepared::OutputInFiles { key };
            }
        }
        Ok(())
    }

    /// After the commit that holds `ops`: the files of outputs it dropped go.
    pub(super) fn committed(&self, ops: &[Prepared]) {
        for op in ops {
            if let Prepared::DropOutput { key } | Prepared::DeleteTask { key } = op {
                self.remove(*key);
            }
        }
    }

    /// One stream of a task's output (1 stdout, 2 stderr); empty when it has no file.
    pub(super) fn read(&self, key: u128, stream: u8) -> std::io::Result<Vec<u8>> {
        let suffix = STREAMS.iter().find(|(n, _)| *n == stream).map_or("stdout", |(_, s)| s);
        let path = self.path(key, suffix);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(bytes),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(err) => Err(std::io::Error::new(err.kind(), format!("{}: {err}", path.display()))),
        }
    }

    /// Removes a task's files, if it has any. Not synced: a removal a crash undoes is done again
    /// by the next start's sweep, since no marker names the file any more.
    pub(super) fn remove(&self, key: u128) {
        for (_, suffix) in STREAMS {
            if let Err(err) = remove(&self.path(key, suffix)) {
                tracing::warn!(error = %err, "could not remove an output file");
            }
        }
    }

    /// The files here, as (task key, path); partial files apart.
    fn entries(&self) -> (Vec<(u128, PathBuf)>, Vec<PathBuf>) {
        let (mut files, mut partial) = (Vec::new(), Vec::new());
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return (files, partial) };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if name.ends_with(PARTIAL) {
                partial.push(path);
                continue;
            }
            let Some((id, suffix)) = name.split_once('.') else { continue };
            if let (Ok(id), true) = (Ulid::from_string(id), STREAMS.iter().any(|(_, s)| *s == suffix)) {
                files.push((u128::from(id), path));
            }
        }
        (files, partial)
    }

    /// Removes partial files and every file whose task `marked` does not say is in files. Run at
    /// open, before the writer starts, so no file is being written meanwhile. Returns how many
    /// files went.
    pub(super) fn sweep(&self, marked: impl Fn(u128) -> bool) -> usize {
        let (files, partial) = self.entries();
        let mut removed = 0;
        for path in partial.into_iter().chain(files.into_iter().filter(|(key, _)| !marked(*key)).map(|(_, p)| p)) {
            match remove(&path) {
                Ok(()) => removed += 1,
                Err(err) => tracing::warn!(path = %path.display(), error = %err, "could not remove an output file"),
            }
        }
        removed
    }

    /// Makes `to` hold the files of the tasks `keys` names, linked where the file system allows
    /// (a file never changes once written), else copied. A file gone meanwhile (retention) is
    /// skipped. Returns the keys whose files were all there.
    pub(super) fn link_into(&self, to: &Blobs, keys: &[u128]) -> std::io::Result<Vec<u128>> {
        std::fs::create_dir_all(&to.dir)?;
        let mut whole = Vec::with_capacity(keys.len());
        for &key in keys {
            let mut all = true;
            for (_, suffix) in STREAMS {
                let (from, dest) = (self.path(key, suffix), to.path(key, suffix));
                if !from.exists() {
                    continue;
                }
                remove(&dest)?;
                let linked = std::fs::hard_link(&from, &dest).or_else(|_| std::fs::copy(&from, &dest).map(drop));
                match linked {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => all = false,
                    Err(err) => return Err(err),
                }
            }
            if all {
                whole.push(key);
            }
        }
        std::fs::File::open(&to.dir)?.sync_all()?;
        Ok(whole)
    }

    /// Every task key with a file here.
    pub(super) fn keys(&self) -> Vec<u128> {
        let mut keys: Vec<u128> = self.entries().0.into_iter().map(|(key, _)| key).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Removes the directory and everything in it (a pruned backup's).
    pub(super) fn remove_all(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }
}

/// Removes a file; one that is not there is fine.
fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_read_removed_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::beside(&dir.path().join("hub.redb"));
        assert_eq!(blobs.dir(), dir.path().join("hub.redb.output"));
        let (a, b) = (u128::from(Ulid::new()), u128::from(Ulid::new()));
        blobs.write(&[(a, b"out", b""), (b, b"", b"err")]).unwrap();
        assert_eq!(blobs.read(a, 1).unwrap(), b"out");
        assert_eq!(blobs.read(a, 2).unwrap(), b"", "an empty stream has no file");
        assert_eq!(blobs.read(b, 2).unwrap(), b"err");
        assert_eq!(blobs.keys(), {
            let mut keys = vec![a, b];
            keys.sort();
            keys
        });
        // Stored again, with a stream now empty: its old file goes.
        blobs.write(&[(b, b"new", b"")]).unwrap();
        assert_eq!((blobs.read(b, 1).unwrap(), blobs.read(b, 2).unwrap()), (b"new".to_vec(), Vec::new()));

        std::fs::write(blobs.path(a, "stdout.partial"), b"half").unwrap();
        assert_eq!(blobs.sweep(|key| key == a), 2, "the partial file and b's unmarked file");
        assert_eq!(blobs.read(a, 1).unwrap(), b"out");
        assert_eq!(blobs.read(b, 1).unwrap(), b"");

        let copy = Blobs::beside(&dir.path().join("backup.redb"));
        assert_eq!(blobs.link_into(&copy, &[a, b]).unwrap(), vec![a, b], "b has no files: nothing is missing");
        assert_eq!(copy.read(a, 1).unwrap(), b"out");
        blobs.remove(a);
        assert_eq!(blobs.read(a, 1).unwrap(), b"");
        assert_eq!(copy.read(a, 1).unwrap(), b"out", "a link outlives the original's name");
        copy.remove_all().unwrap();
        assert!(!copy.dir().exists());
    }
}
