//! Tokens an LLM reply says it used, read from the reply as it streams past:
//! a JSON body's `usage` (Anthropic `input_tokens`/`output_tokens`, OpenAI
//! `prompt_tokens`/`completion_tokens`), or the server-sent events that carry
//! one (Anthropic's `message_start` and `message_delta`, OpenAI's last chunk
//! with `stream_options.include_usage`). Counts only grow within one reply, so
//! the largest seen of each is the reply's.

use serde_json::Value;

/// A JSON body larger than this is passed on but not read for usage.
const MAX_JSON: usize = 8 << 20;
/// An event line longer than this is skipped.
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Tokens {
    pub(super) input: u64,
    pub(super) output: u64,
}

enum Format {
    Json { body: Vec<u8>, whole: bool },
    Events { line: Vec<u8>, skipping: bool },
    Other,
}

/// One reply's meter.
pub(super) struct Meter {
    format: Format,
    pub(super) tokens: Tokens,
    pub(super) model: Option<String>,
}

impl Meter {
    /// For a reply of `content_type`.
    pub(super) fn new(content_type: &str) -> Meter {
        let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let format = match mime.as_str() {
            "text/event-stream" => Format::Events { line: Vec::new(), skipping: false },
            m if m == "application/json" || m.ends_with("+json") => Format::Json { body: Vec::new(), whole: true },
            _ => Format::Other,
        };
        Meter { format, tokens: Tokens::default(), model: None }
    }

    pub(super) fn feed(&mut self, chunk: &[u8]) {
        let mut events = Vec::new();
        match &mut self.format {
            Format::Json { body, whole } => {
                if *whole && body.len() + chunk.len() <= MAX_JSON {
                    body.extend_from_slice(chunk);
                } else {
                    *whole = false;
                    *body = Vec::new();
                }
            }
            Format::Events { line, skipping } => {
                for piece in chunk.split_inclusive(|&b| b == b'\n') {
                    if !*skipping {
                        line.extend_from_slice(piece);
                        if line.len() > MAX_LINE {
                            *skipping = true;
                            *line = Vec::new();
                        }
                    }
                    if piece.ends_with(b"\n") {
                        if !*skipping {
                            events.push(std::mem::take(line));
                        }
                        *skipping = false;
                    }
                }
            }
            Format::Other => {}
        }
        for line in events {
            self.event_line(&line);
        }
    }

    /// The reply ended.
    pub(super) fn finish(&mut self) {
        match std::mem::replace(&mut self.format, Format::Other) {
            Format::Json { body, whole: true } => {
                if let Ok(value) = serde_json::from_slice::<Value>(&body) {
                    self.absorb(&value);
                }
            }
            Format::Events { line, skipping: false } => self.event_line(&line),
            _ => {}
        }
    }

    fn event_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else { return };
        if let Ok(value) = serde_json::from_slice::<Value>(data.trim_ascii()) {
            self.absorb(&value);
        }
    }

    /// A reply object, or an event: its `usage` (or `message.usage`) and model.
    fn absorb(&mut self, value: &Value) {
        for v in [value, &value["message"]] {
            if let Some(model) = v["model"].as_str().filter(|m| m.len() <= 200) {
                self.model = Some(model.to_owned());
            }
            let usage = &v["usage"];
            let count = |keys: &[&str]| keys.iter().filter_map(|k| usage[*k].as_u64()).fold(0u64, u64::saturating_add);
            let input =
                count(&["input_tokens", "prompt_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]);
            let output = count(&["output_tokens", "completion_tokens"]);
            self.tokens.input = self.tokens.input.max(input);
            self.tokens.output = self.tokens.output.max(output);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metered(content_type: &str, chunks: &[&str]) -> Meter {
        let mut m = Meter::new(content_type);
        for c in chunks {
            m.feed(c.as_bytes());
        }
        m.finish();
        m
    }

    #[test]
    fn reads_json_usage_of_both_providers() {
        let anthropic = r#"{"id":"msg_1","model":"claude-x","usage":{"input_tokens":12,"output_tokens":30}}"#;
        let (a, b) = anthropic.split_at(40);
        let m = metered("application/json", &[a, b]);
        assert_eq!(m.tokens, Tokens { input: 12, output: 30 });
        assert_eq!(m.model.as_deref(), Some("claude-x"));
        let openai = r#"{"model":"gpt-x","usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        assert_eq!(metered("application/json; charset=utf-8", &[openai]).tokens, Tokens { input: 5, output: 7 });
        assert_eq!(metered("text/plain", &[openai]).tokens, Tokens::default());
    }

    #[test]
    fn reads_streamed_usage_split_anywhere() {
        let events = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
        );
        for cut in 0..events.len() {
            let m = metered("text/event-stream", &[&events[..cut], &events[cut..]]);
            assert_eq!(m.tokens, Tokens { input: 25, output: 15 }, "cut at {cut}");
        }
        let openai = "data: {\"choices\":[]}\n\ndata: {\"model\":\"gpt-x\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
        assert_eq!(metered("text/event-stream", &[openai]).tokens, Tokens { input: 3, output: 4 });
    }
}
