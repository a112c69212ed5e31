//! A minimal server-sent events parser: bytes in, complete events out.
//!
//! Handles what the hub sends (`event:` and `data:` fields, comments for keep-alive, LF or
//! CRLF line ends) and events split across reads.

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) name: String,
    pub(crate) data: String,
}

#[derive(Default)]
pub(crate) struct Parser {
    buffer: Vec<u8>,
    name: String,
    data: Vec<String>,
}

impl Parser {
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    let name = if self.name.is_empty() { "message".to_owned() } else { std::mem::take(&mut self.name) };
                    events.push(Event { name, data: self.data.join("\n") });
                }
                self.name.clear();
                self.data.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.name = value.to_owned(),
                "data" => self.data.push(value.to_owned()),
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_come_out_whole() {
        let mut parser = Parser::default();
        assert_eq!(parser.feed(b": keep-alive\n\nevent: snap"), vec![]);
        assert_eq!(
            parser.feed(b"shot\r\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\n"),
            vec![
                Event { name: "snapshot".into(), data: "{\"a\":1}".into() },
                Event { name: "message".into(), data: "x\ny".into() },
            ]
        );
    }
}
