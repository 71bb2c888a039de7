//! Reading server-sent events, as OpenAI streams chat completions: events
//! end with a blank line; each `data:` line carries one JSON chunk, or
//! `[DONE]`. Lines may end in `\n`, `\r\n` or `\r`, as the SSE format allows
//! (a proxy or another server may send `\r\n\r\n` between events).

/// Splits bytes, as they arrive, into the `data` payloads of complete events.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    /// Where the unfinished line in `buf` starts: the bytes before it hold no
    /// blank line, so the next push resumes there instead of rescanning.
    scanned: usize,
    /// The last line seen ended in a `\r` that was the last byte then.
    cr_pending: bool,
}

impl SseDecoder {
    /// Feeds `bytes`; returns the trimmed `data` payloads of every event they
    /// complete, in order. An unfinished event waits for the next call.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.event_end() {
            let event: Vec<u8> = self.buf.drain(..end).collect();
            self.scanned = 0;
            out.extend(
                lines(&event)
                    .filter_map(|l| l.strip_prefix(b"data:"))
                    .map(|d| String::from_utf8_lossy(d).trim().to_string()),
            );
        }
        out
    }

    /// What did not end in a blank line: all of it, for a server that
    /// answered with plain JSON instead of a stream.
    pub fn rest(&self) -> &[u8] {
        &self.buf
    }

    /// The length of the first complete event in `buf` (up to and including
    /// the blank line that ends it), if there is one.
    fn event_end(&mut self) -> Option<usize> {
        if self.cr_pending && self.scanned < self.buf.len() {
            // The line before ended in `\r` at the end of what had come: a `\n` now is the rest of its `\r\n`.
            self.cr_pending = false;
            if self.buf[self.scanned] == b'\n' {
                if self.scanned == 0 {
                    self.buf.remove(0);
                } else {
                    self.scanned += 1;
                }
            }
        }
        let len = self.buf.len();
        let (mut line_start, mut i) = (self.scanned, self.scanned);
        while i < len {
            let next = match self.buf[i] {
                b'\n' => i + 1,
                b'\r' if self.buf.get(i + 1) == Some(&b'\n') => i + 2,
                b'\r' => i + 1,
                _ => {
                    i += 1;
                    continue;
                }
            };
            // A `\r` ends its line at once; whether a `\n` follows is known with the next bytes.
            self.cr_pending = next == len && self.buf[i] == b'\r';
            if i == line_start {
                return Some(next);
            }
            (line_start, i) = (next, next);
        }
        self.scanned = line_start;
        None
    }
}

/// The lines of one event, without their endings (`\n`, `\r\n` or `\r`).
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(rest.len());
        let line = &rest[..end];
        let skip = match rest.get(end..end + 2) {
            Some(b"\r\n") => 2,
            _ => usize::from(end < rest.len()),
        };
        rest = &rest[end + skip..];
        Some(line)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way of cutting `stream` in two decodes to `want`, leaving nothing over.
    fn decodes_at_every_cut(stream: &[u8], want: &[&str]) {
        for cut in 0..=stream.len() {
            let mut d = SseDecoder::default();
            let mut got = d.push(&stream[..cut]);
            got.extend(d.push(&stream[cut..]));
            assert_eq!(got, want, "cut at {cut} of {:?}", String::from_utf8_lossy(stream));
            assert!(d.rest().is_empty(), "cut at {cut}: {:?} left over", String::from_utf8_lossy(d.rest()));
        }
        // And byte by byte, as a slow connection delivers it.
        let mut d = SseDecoder::default();
        let got: Vec<String> = stream.iter().flat_map(|b| d.push(&[*b])).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn events_are_split_across_arbitrary_chunk_boundaries() {
        let stream = b"data: {\"a\":1}\n\n: comment\n\ndata:{\"b\":2}\n\ndata: [DONE]\n\n";
        decodes_at_every_cut(stream, &["{\"a\":1}", "{\"b\":2}", "[DONE]"]);
        let mut d = SseDecoder::default();
        assert!(d.push(b"{\"plain\": true}").is_empty());
        assert_eq!(d.rest(), b"{\"plain\": true}");
    }

    #[test]
    fn crlf_and_cr_line_endings_end_events_too() {
        let want = ["{\"a\":1}", "{\"b\":2}", "[DONE]"];
        decodes_at_every_cut(
            b"data: {\"a\":1}\r\n\r\n: comment\r\n\r\ndata:{\"b\":2}\r\n\r\ndata: [DONE]\r\n\r\n",
            &want,
        );
        decodes_at_every_cut(b"data: {\"a\":1}\r\r: comment\r\rdata:{\"b\":2}\r\rdata: [DONE]\r\r", &want);
        // Mixed within one stream, and an event with an `event:` field before its data.
        decodes_at_every_cut(b"data: {\"a\":1}\r\n\nevent: x\r\ndata:{\"b\":2}\n\r\ndata: [DONE]\n\n", &want);
        // `\r\n` alone ends a line, not an event.
        let mut d = SseDecoder::default();
        assert!(d.push(b"data: {\"a\":1}\r\n").is_empty());
        assert_eq!(d.push(b"\r\n"), ["{\"a\":1}"]);
        // A pretty-printed JSON answer (no blank line) is kept whole for `rest`.
        let plain = b"{\r\n  \"plain\": true\r\n}";
        let mut d = SseDecoder::default();
        assert!(d.push(plain).is_empty());
        assert_eq!(d.rest(), plain);
    }
}
