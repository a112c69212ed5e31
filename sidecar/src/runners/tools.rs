//! The tools an agent loop gives a model, bound to the task's workspace: `read_file`,
//! `write_file`, `edit_file` (replace a unique snippet), `list_files`, `search` (in-process,
//! no shelling out) and `run_command` (the shell sandbox).
//!
//! **Invariant:** a tool path never leaves the workspace. It must be relative, without `..`;
//! it is resolved (symlinks followed) and checked against the workspace's own resolved path,
//! and for a file that does not exist yet its deepest existing ancestor is. A symlink pointing
//! out, or a path through a symlinked directory that leads out, is refused.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentcom_types::domain::Exit;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::shell;
use crate::attempt::TaskKey;
use crate::contain;
use crate::job::Quiet;

/// Bytes of a file or of a tool's result a model is shown.
pub const RESULT_BYTES: usize = 16 * 1024;
/// Entries `list_files` and matches `search` return at most.
const MAX_LISTED: usize = 500;
/// How long a `run_command` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// The workspace's tools, as every provider's tool calling takes them.
pub fn definitions() -> Vec<agentcom_llm::tools::Tool> {
    let tool = |name: &str, description: &str, properties: Value, required: &[&str]| agentcom_llm::tools::Tool {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters: json!({ "type": "object", "properties": properties, "required": required }),
    };
    let path = json!({ "type": "string", "description": "a path relative to the workspace" });
    vec![
        tool("read_file", "Read a file of the workspace.", json!({ "path": path }), &["path"]),
        tool(
            "write_file",
            "Write a whole file of the workspace (made if missing).",
            json!({ "path": path, "content": { "type": "string" } }),
            &["path", "content"],
        ),
        tool(
            "edit_file",
            "Replace a snippet that occurs exactly once in a file with another.",
            json!({ "path": path, "old_string": { "type": "string" }, "new_string": { "type": "string" } }),
            &["path", "old_string", "new_string"],
        ),
        tool("list_files", "List the files under a directory of the workspace.", json!({ "path": path }), &[]),
        tool(
            "search",
            "Find the lines of the workspace's files that contain a text.",
            json!({ "text": { "type": "string" }, "path": path }),
            &["text"],
        ),
        tool(
            "run_command",
            "Run a shell command in the workspace and see its exit status and output.",
            json!({ "command": { "type": "string" } }),
            &["command"],
        ),
    ]
}

/// A tool call's arguments in a few words, for a transcript: the path, command or text it
/// names (the keys of these tools and of Claude Code's), else the arguments themselves.
pub fn summarize(arguments: &Value) -> String {
    let named = ["file_path", "path", "command", "pattern", "text", "url"].iter().find_map(|k| arguments[*k].as_str());
    let text = match named {
        Some(value) => value.to_owned(),
        None if arguments.as_object().is_none_or(|o| o.is_empty()) => String::new(),
        None => arguments.to_string(),
    };
    text.chars().take(120).collect()
}

/// Where a tool runs: the workspace, and what a command there needs.
pub struct Workspace<'a> {
    pub root: &'a Path,
    pub settings: &'a shell::Settings,
    pub key: &'a TaskKey,
    pub limits: contain::Limits,
    pub cancel: &'a CancellationToken,
}

/// Runs one tool call; the result (or why it failed) is what the model sees, capped.
pub async fn run(name: &str, arguments: &Value, workspace: &Workspace<'_>) -> (bool, String) {
    let result = match name {
        "read_file" => read_file(workspace.root, arguments),
        "write_file" => write_file(workspace.root, arguments),
        "edit_file" => edit_file(workspace.root, arguments),
        "list_files" => list_files(workspace.root, arguments),
        "search" => search(workspace.root, arguments),
        "run_command" => run_command(workspace, arguments).await,
        other => Err(format!("no tool named {other:?}")),
    };
    match result {
        Ok(text) => (true, clip(text)),
        Err(error) => (false, clip(format!("error: {error}"))),
    }
}

fn clip(mut text: String) -> String {
    if text.len() > RESULT_BYTES {
        let end = (0..=RESULT_BYTES).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(end);
        text.push_str("\n[cut]");
    }
    text
}

fn text<'a>(arguments: &'a Value, name: &str) -> Result<&'a str, String> {
    arguments[name].as_str().ok_or_else(|| format!("the argument {name:?} (a string) is missing"))
}

/// The path `path` names inside `root` (itself resolved), or why it may not be used.
pub fn inside(root: &Path, path: &str) -> Result<PathBuf, String> {
    let relative = Path::new(path);
    if relative.is_absolute() {
        return Err(format!("{path:?} is absolute: give a path relative to the workspace"));
    }
    if relative.components().any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_))) {
        return Err(format!("{path:?} climbs out of the workspace"));
    }
    let root = std::fs::canonicalize(root).map_err(|err| format!("the workspace: {err}"))?;
    let joined = root.join(relative);
    // The path itself if it exists (a symlink is followed), else its deepest existing ancestor.
    let mut probe = joined.clone();
    let resolved = loop {
        match std::fs::canonicalize(&probe) {
            Ok(resolved) => break resolved,
            Err(_) if std::fs::symlink_metadata(&probe).is_ok() => {
                return Err(format!("{path:?} is a link to nowhere"));
            }
            Err(_) => match probe.parent() {
                Some(parent) => probe = parent.to_owned(),
                None => return Err(format!("{path:?} has no existing ancestor")),
            },
        }
    };
    if !resolved.starts_with(&root) {
        return Err(format!("{path:?} leads out of the workspace"));
    }
    match joined.strip_prefix(&probe) {
        Ok(rest) if !rest.as_os_str().is_empty() => Ok(resolved.join(rest)),
        _ => Ok(resolved),
    }
}

fn read_file(root: &Path, arguments: &Value) -> Result<String, String> {
    let path = text(arguments, "path")?;
    let file = inside(root, path)?;
    let bytes = std::fs::read(&file).map_err(|err| format!("{path}: {err}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn write_file(root: &Path, arguments: &Value) -> Result<String, String> {
    let path = text(arguments, "path")?;
    let content = text(arguments, "content")?;
    let file = inside(root, path)?;
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).map_err(|err| format!("{path}: {err}"))?;
    }
    std::fs::write(&file, content).map_err(|err| format!("{path}: {err}"))?;
    Ok(format!("wrote {} bytes to {path}", content.len()))
}

fn edit_file(root: &Path, arguments: &Value) -> Result<String, String> {
    let path = text(arguments, "path")?;
    let (old, new) = (text(arguments, "old_string")?, text(arguments, "new_string")?);
    let file = inside(root, path)?;
    let content = std::fs::read_to_string(&file).map_err(|err| format!("{path}: {err}"))?;
    match content.matches(old).count() {
        0 => Err(format!("{path} does not contain the old_string")),
        1 => {
            std::fs::write(&file, content.replacen(old, new, 1)).map_err(|err| format!("{path}: {err}"))?;
            Ok(format!("edited {path}"))
        }
        n => Err(format!("{path} contains the old_string {n} times; give a longer, unique one")),
    }
}

/// What is under a directory, relative to the workspace, `.git` left out, in name order, each
/// with whether it is a regular file (symlinks are listed, never followed or read).
fn walk(root: &Path, start: &Path) -> Vec<(PathBuf, bool)> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    let mut found = Vec::new();
    let mut pending = vec![start.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries.into_iter().rev() {
            let path = entry.path();
            if entry.file_name() == ".git" {
                continue;
            }
            // Symlinks are listed, never followed.
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(path),
                Ok(kind) => found.push((path.strip_prefix(&root).map(Path::to_owned).unwrap_or(path), kind.is_file())),
                Err(_) => {}
            }
        }
    }
    found.sort();
    found
}

fn list_files(root: &Path, arguments: &Value) -> Result<String, String> {
    let path = arguments["path"].as_str().filter(|p| !p.is_empty()).unwrap_or(".");
    let dir =
        if path == "." { std::fs::canonicalize(root).map_err(|err| err.to_string())? } else { inside(root, path)? };
    let files = walk(root, &dir);
    let mut listed: Vec<String> = files.iter().take(MAX_LISTED).map(|(p, _)| p.display().to_string()).collect();
    if files.len() > MAX_LISTED {
        listed.push(format!("... and {} more", files.len() - MAX_LISTED));
    }
    Ok(if listed.is_empty() { "no files".to_owned() } else { listed.join("\n") })
}

fn search(root: &Path, arguments: &Value) -> Result<String, String> {
    let needle = text(arguments, "text")?;
    if needle.is_empty() {
        return Err("the text to search for is empty".into());
    }
    let path = arguments["path"].as_str().filter(|p| !p.is_empty()).unwrap_or(".");
    let dir =
        if path == "." { std::fs::canonicalize(root).map_err(|err| err.to_string())? } else { inside(root, path)? };
    let base = std::fs::canonicalize(root).map_err(|err| err.to_string())?;
    let mut matches = Vec::new();
    for (file, regular) in walk(root, &dir) {
        if !regular {
            continue; // A symlink is not read: it may lead out.
        }
        let Ok(content) = std::fs::read_to_string(base.join(&file)) else { continue }; // Binary or unreadable.
        for (n, line) in content.lines().enumerate() {
            if line.contains(needle) {
                matches.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                if matches.len() == MAX_LISTED {
                    return Ok(matches.join("\n") + "\n[more matches left out]");
                }
            }
        }
    }
    Ok(if matches.is_empty() { format!("no line contains {needle:?}") } else { matches.join("\n") })
}

async fn run_command(workspace: &Workspace<'_>, arguments: &Value) -> Result<String, String> {
    let command = text(arguments, "command")?;
    let job = shell::ShellJob {
        key: workspace.key.clone(),
        program: shell::Program::Script(command.to_owned()),
        cwd: Some(workspace.root.to_owned()),
        env: Vec::new(),
        secret_env: Vec::new(),
        timeout: Some(COMMAND_TIMEOUT),
        max_output_bytes: RESULT_BYTES,
        limits: workspace.limits,
    };
    let ran = shell::run(&job, workspace.settings, Arc::new(Quiet), workspace.cancel.child_token()).await;
    if let Some(error) = ran.error {
        return Err(error);
    }
    let status = match ran.exit {
        Exit::Code(code) => format!("exit code {code}"),
        Exit::Signal(signal) => format!("killed by signal {signal}"),
        Exit::Unknown => "no exit status".to_owned(),
    };
    let timed_out = if ran.timed_out { " (timed out)" } else { "" };
    Ok(format!(
        "{status}{timed_out}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> (tempfile::TempDir, PathBuf) {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("ws");
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("src/lib.rs"), "fn answer() -> u32 { 41 }\n").unwrap();
        std::fs::write(outer.path().join("secret.txt"), "the sidecar's").unwrap();
        std::fs::create_dir_all(outer.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret.txt"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(outer.path().join("elsewhere"), root.join("door")).unwrap();
        std::os::unix::fs::symlink(root.join("src"), root.join("code")).unwrap();
        (outer, root)
    }

    #[test]
    fn escapes_are_refused_each_way() {
        let (outer, root) = workspace();
        let refused = |path: &str, why: &str| {
            let err = inside(&root, path).expect_err(path);
            assert!(err.contains(why), "{path}: {err}");
        };
        refused("../secret.txt", "climbs out");
        refused("src/../../secret.txt", "climbs out");
        refused(&outer.path().join("secret.txt").to_string_lossy(), "absolute");
        refused("/etc/passwd", "absolute");
        refused("link", "leads out"); // A symlink pointing out.
        refused("door/new.txt", "leads out"); // A path through a symlinked directory that leads out.
        // Inside stays inside, whether it exists, is new, or goes through a link that stays in.
        let root_resolved = std::fs::canonicalize(&root).unwrap();
        assert_eq!(inside(&root, "src/lib.rs").unwrap(), root_resolved.join("src/lib.rs"));
        assert_eq!(inside(&root, "src/new/deep.rs").unwrap(), root_resolved.join("src/new/deep.rs"));
        assert_eq!(inside(&root, "code/lib.rs").unwrap(), root_resolved.join("src/lib.rs"));
        // The tools refuse through the same check, and write nothing outside.
        let args = json!({ "path": "door/x.txt", "content": "x" });
        assert!(write_file(&root, &args).unwrap_err().contains("leads out"));
        assert!(!outer.path().join("elsewhere/x.txt").exists());
        assert!(read_file(&root, &json!({ "path": "link" })).unwrap_err().contains("leads out"));
    }

    #[test]
    fn files_are_read_written_edited_listed_and_searched() {
        let (_outer, root) = workspace();
        assert_eq!(read_file(&root, &json!({ "path": "src/lib.rs" })).unwrap(), "fn answer() -> u32 { 41 }\n");
        let edit = json!({ "path": "src/lib.rs", "old_string": "41", "new_string": "42" });
        assert_eq!(edit_file(&root, &edit).unwrap(), "edited src/lib.rs");
        assert!(edit_file(&root, &edit).unwrap_err().contains("does not contain"));
        write_file(&root, &json!({ "path": "notes/todo.txt", "content": "42 twice: 42" })).unwrap();
        let twice = json!({ "path": "notes/todo.txt", "old_string": "42", "new_string": "x" });
        assert!(edit_file(&root, &twice).unwrap_err().contains("2 times"));
        // Symlinks are listed, not followed (`door` leads out).
        assert_eq!(list_files(&root, &json!({})).unwrap(), "code\ndoor\nlink\nnotes/todo.txt\nsrc/lib.rs");
        assert_eq!(
            search(&root, &json!({ "text": "42" })).unwrap(),
            "notes/todo.txt:1: 42 twice: 42\nsrc/lib.rs:1: fn answer() -> u32 { 42 }"
        );
        assert!(search(&root, &json!({})).unwrap_err().contains("\"text\""));
        // A symlink that leads out is never read by a search.
        assert_eq!(search(&root, &json!({ "text": "sidecar" })).unwrap(), "no line contains \"sidecar\"");
    }
}
