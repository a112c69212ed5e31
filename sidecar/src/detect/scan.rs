//! The repository as detection reads it: its files (up to a bound, skipping what package
//! managers and builds put there), each read as text when asked.

use std::path::{Path, PathBuf};

/// Files walked at most: a large repository is judged by its first files, in path order.
const MAX_FILES: usize = 5_000;
/// Bytes read of a file at most.
const MAX_BYTES: u64 = 256 * 1024;
/// Directories never walked: dependencies, builds, caches, version control.
const SKIP: &[&str] = &[
    ".git",
    "node_modules",
    ".venv",
    "venv",
    "env",
    "__pycache__",
    "target",
    "vendor",
    "dist",
    "build",
    ".tox",
    ".mypy_cache",
    ".pytest_cache",
    ".next",
    ".cache",
];

pub(super) struct Repo {
    root: PathBuf,
    /// Relative paths with `/` separators, sorted.
    files: Vec<String>,
}

impl Repo {
    pub(super) fn read(root: &Path) -> Repo {
        let mut files = Vec::new();
        let mut dirs = vec![PathBuf::new()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(root.join(&dir)) else { continue };
            let mut entries: Vec<_> = entries.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Ok(kind) = entry.file_type() else { continue };
                let path = dir.join(&name);
                if kind.is_dir() && !SKIP.contains(&name.as_str()) {
                    dirs.push(path);
                } else if kind.is_file() && files.len() < MAX_FILES {
                    files.push(path.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        files.sort();
        Repo { root: root.to_owned(), files }
    }

    pub(super) fn has(&self, path: &str) -> bool {
        self.files.binary_search_by(|f| f.as_str().cmp(path)).is_ok()
    }

    /// The first of `paths` that exists.
    pub(super) fn first_of<'a>(&self, paths: &[&'a str]) -> Option<&'a str> {
        paths.iter().copied().find(|p| self.has(p))
    }

    /// A file's text (its first 256 KiB), if it is there and reads as UTF-8.
    pub(super) fn text(&self, path: &str) -> Option<String> {
        use std::io::Read;
        let file = std::fs::File::open(self.root.join(path)).ok()?;
        let mut bytes = Vec::new();
        file.take(MAX_BYTES).read_to_end(&mut bytes).ok()?;
        String::from_utf8(bytes).ok()
    }

    /// Files whose names end with one of `extensions`, in path order.
    pub(super) fn sources<'a>(&'a self, extensions: &'a [&'a str]) -> impl Iterator<Item = &'a str> + 'a {
        self.files.iter().map(String::as_str).filter(move |f| extensions.iter().any(|e| f.ends_with(e)))
    }

    /// The first line of the `extensions` files that matches `pattern`: the file, the line's
    /// number (from 1) and the captures.
    pub(super) fn find(&self, extensions: &[&str], pattern: &regex::Regex) -> Option<(String, usize, Vec<String>)> {
        for file in self.sources(extensions) {
            let Some(text) = self.text(file) else { continue };
            for (n, line) in text.lines().enumerate() {
                if let Some(found) = pattern.captures(line) {
                    let groups = found.iter().skip(1).map(|g| g.map_or(String::new(), |g| g.as_str().to_owned()));
                    return Some((file.to_owned(), n + 1, groups.collect()));
                }
            }
        }
        None
    }
}
