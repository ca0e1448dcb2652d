//! A server-sent events reader (the `text/event-stream` format): the LLM agent
//! reads an OpenAI-compatible stream with it, and `baton watch` a task's events.
//! Pure: bytes in, events out.

/// One event: its `event` name (none means `message`), `id`, and `data` lines
/// joined by `\n`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
}

/// Splits a stream into events. Bytes may arrive cut anywhere, lines end in `\n`
/// or `\r\n`, several `data:` lines of one event are joined by `\n`, comments and
/// unknown fields are ignored, and an event without data is not dispatched.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    data: Vec<String>,
    event: Option<String>,
    id: Option<String>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            self.line(line, &mut events);
        }
        events
    }

    /// The last event when the stream ends without a blank line after it.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if !self.buffer.is_empty() {
            let rest = std::mem::take(&mut self.buffer);
            let rest = String::from_utf8_lossy(&rest).into_owned();
            self.line(rest.trim_end_matches('\r'), &mut events);
        }
        self.line("", &mut events);
        events
    }

    fn line(&mut self, line: &str, events: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if !self.data.is_empty() {
                events.push(SseEvent {
                    event: self.event.take(),
                    id: self.id.take(),
                    data: self.data.join("\n"),
                });
                self.data.clear();
            }
            self.event = None;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => self.data.push(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            "id" => self.id = Some(value.to_string()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn events_survive_any_cut() {
        let stream = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\ndata: line1\ndata:line2\nevent: x\n\ndata: [DONE]";
        for cut in 0..stream.len() {
            let mut p = SseParser::default();
            let mut events = p.push(&stream[..cut]);
            events.extend(p.push(&stream[cut..]));
            events.extend(p.finish());
            assert_eq!(
                data(&events),
                vec!["{\"a\":1}", "line1\nline2", "[DONE]"],
                "cut at {cut}"
            );
            assert_eq!(events[1].event.as_deref(), Some("x"));
            assert_eq!(events[0].event, None);
        }
    }

    #[test]
    fn names_and_ids_belong_to_their_own_event() {
        let mut p = SseParser::default();
        let events = p.push(b"event: alert\nid: 3\ndata: {}\n\nevent: lonely\n\ndata: plain\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: Some("alert".into()),
                    id: Some("3".into()),
                    data: "{}".into()
                },
                SseEvent {
                    event: None,
                    id: None,
                    data: "plain".into()
                },
            ]
        );
    }
}
