//! What reaches a terminal from the hub. Task output, names, reasons and host names come from
//! whoever submitted the task or runs the sidecar; their control characters would reach the
//! terminal as commands (a title change, a cursor move, a hidden line). Human output shows them
//! escaped, as `ls` and `kubectl` quote names: `\x1b`, `\r`, `\u{9b}`. `--json` keeps the
//! values (the JSON encoder escapes control characters itself), and task output written to a
//! pipe or a file stays byte for byte what the task printed.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

static HUMAN: AtomicBool = AtomicBool::new(true);

/// Whether output is for people (not `--json`): then every string from the hub is escaped.
pub(crate) fn set_human(human: bool) {
    HUMAN.store(human, Ordering::Relaxed);
}

pub(crate) fn human() -> bool {
    HUMAN.load(Ordering::Relaxed)
}

/// A character a terminal would act on rather than show: C0 controls but newline and tab,
/// DEL, and the C1 controls (U+0080 to U+009F; U+009B is a CSI on many terminals).
fn is_control(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c)
}

fn escape_char(c: char, out: &mut String) {
    use std::fmt::Write;
    match c {
        '\r' => out.push_str("\\r"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// `text` with its control characters escaped; borrowed when it has none.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control(c) { escape_char(c, &mut out) } else { out.push(c) }
    }
    Cow::Owned(out)
}

/// Escapes every string in `value`, keys included, in place (human output only).
pub(crate) fn escape_value(value: &mut Value) {
    match value {
        Value::String(text) => {
            if let Cow::Owned(escaped) = escape(text) {
                *text = escaped;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(escape_value),
        Value::Object(map) => {
            if map.keys().any(|k| k.chars().any(is_control)) {
                let entries = std::mem::take(map);
                for (key, mut item) in entries {
                    escape_value(&mut item);
                    map.insert(escape(&key).into_owned(), item);
                }
            } else {
                map.values_mut().for_each(escape_value);
            }
        }
        _ => {}
    }
}

/// Task output on its way to our stdout or stderr: escaped when that is a terminal (invalid
/// UTF-8 shown as `\xNN`), else the task's own bytes.
pub(crate) fn output_for(bytes: &[u8], to_terminal: bool) -> Cow<'_, [u8]> {
    if !to_terminal {
        return Cow::Borrowed(bytes);
    }
    let mut out = String::new();
    let mut changed = false;
    for chunk in bytes.utf8_chunks() {
        let escaped = escape(chunk.valid());
        changed |= matches!(escaped, Cow::Owned(_));
        out.push_str(&escaped);
        for byte in chunk.invalid() {
            changed = true;
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    if changed { Cow::Owned(out.into_bytes()) } else { Cow::Borrowed(bytes) }
}

/// Asked once: output events come by the thousand.
pub(crate) fn stdout_is_terminal() -> bool {
    static TERMINAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TERMINAL.get_or_init(|| std::io::stdout().is_terminal())
}

pub(crate) fn stderr_is_terminal() -> bool {
    static TERMINAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TERMINAL.get_or_init(|| std::io::stderr().is_terminal())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_not_copied() {
        assert!(matches!(escape("host-1\tok\n"), Cow::Borrowed(_)));
        assert_eq!(escape("x\x1b]0;PWN\x07"), "x\\x1b]0;PWN\\x07");
        assert_eq!(escape("a\rb\u{7f}c\u{9b}2J"), "a\\rb\\x7fc\\u{9b}2J");
        assert_eq!(escape("naïve ✓"), "naïve ✓");
    }

    #[test]
    fn every_string_of_a_value_is_escaped() {
        let mut value = serde_json::json!({
            "task": {"spec": {"name": "\x1b[2Jwipe"}, "tags": ["ok", "\x07"]},
            "host\x1b": 3,
        });
        escape_value(&mut value);
        assert_eq!(value["task"]["spec"]["name"], "\\x1b[2Jwipe");
        assert_eq!(value["task"]["tags"][1], "\\x07");
        assert_eq!(value["host\\x1b"], 3);
    }

    #[test]
    fn output_is_escaped_for_a_terminal_only() {
        let raw = b"line\n\x1b[31mred\xff\n";
        assert_eq!(output_for(raw, false).as_ref(), raw);
        assert_eq!(output_for(raw, true).as_ref(), b"line\n\\x1b[31mred\\xff\n");
        assert!(matches!(output_for(b"plain\n", true), Cow::Borrowed(_)));
    }
}
