//! Reading server-sent events, as OpenAI streams chat completions: events
//! end with a blank line; each `data:` line carries one JSON chunk, or
//! `[DONE]`.

/// Splits bytes, as they arrive, into the `data` payloads of complete events.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
}

impl SseDecoder {
    /// Feeds `bytes`; returns the trimmed `data` payloads of every event they
    /// complete, in order. An unfinished event waits for the next call.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            out.extend(String::from_utf8_lossy(&event).lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.trim().to_string()));
        }
        out
    }

    /// What did not end in a blank line: all of it, for a server that
    /// answered with plain JSON instead of a stream.
    pub fn rest(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_arbitrary_chunk_boundaries() {
        let stream = b"data: {\"a\":1}\n\n: comment\n\ndata:{\"b\":2}\n\ndata: [DONE]\n\n";
        for cut in 0..stream.len() {
            let mut d = SseDecoder::default();
            let mut got = d.push(&stream[..cut]);
            got.extend(d.push(&stream[cut..]));
            assert_eq!(got, ["{\"a\":1}", "{\"b\":2}", "[DONE]"], "cut at {cut}");
            assert!(d.rest().is_empty());
        }
        let mut d = SseDecoder::default();
        assert!(d.push(b"{\"plain\": true}").is_empty());
        assert_eq!(d.rest(), b"{\"plain\": true}");
    }
}
