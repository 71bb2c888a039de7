//! Stop-sequence detection over a stream of token pieces.
//!
//! Invariant: text is released to the client only once it can no longer be
//! the beginning of a stop sequence, so a stop string is never half-sent, and
//! released text is never taken back. Tokens are released whole, so each
//! released token keeps its logprob.

/// Outcome of feeding one more piece of text.
#[derive(Debug, PartialEq, Eq)]
pub enum StopScan {
    /// The first `n` held pieces are safe to release; keep holding the rest.
    Release(usize),
    /// A stop sequence matched: release the held text up to byte `cut` of the
    /// held buffer (the stop text and anything after it is dropped).
    Stopped { cut: usize },
}

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Scan the held text (all pieces not yet released, concatenated) whose
    /// piece boundaries are `piece_ends` (cumulative byte offsets).
    pub fn scan(&self, held: &str, piece_ends: &[usize]) -> StopScan {
        if let Some(cut) = self.stops.iter().filter_map(|s| held.find(s.as_str())).min() {
            return StopScan::Stopped { cut };
        }
        // The longest suffix of `held` that is a proper prefix of some stop.
        let hold_from = self
            .stops
            .iter()
            .filter_map(|stop| {
                (1..stop.len().min(held.len() + 1))
                    .rev()
                    .filter(|&k| stop.is_char_boundary(k) && held.is_char_boundary(held.len() - k))
                    .find(|&k| held.ends_with(&stop[..k]))
                    .map(|k| held.len() - k)
            })
            .min()
            .unwrap_or(held.len());
        StopScan::Release(piece_ends.iter().take_while(|&&end| end <= hold_from).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(pieces: &[&str]) -> (String, Vec<usize>) {
        let mut text = String::new();
        let mut ends = vec![];
        for p in pieces {
            text.push_str(p);
            ends.push(text.len());
        }
        (text, ends)
    }

    #[test]
    fn no_stops_releases_everything() {
        let m = StopMatcher::new(vec![]);
        let (t, e) = ends(&["Hello", " world"]);
        assert_eq!(m.scan(&t, &e), StopScan::Release(2));
    }

    #[test]
    fn holds_a_possible_prefix() {
        let m = StopMatcher::new(vec!["END".into()]);
        let (t, e) = ends(&["Hello ", "E"]);
        assert_eq!(m.scan(&t, &e), StopScan::Release(1));
        let (t, e) = ends(&["Hello ", "EN"]);
        assert_eq!(m.scan(&t, &e), StopScan::Release(1));
    }

    #[test]
    fn releases_when_prefix_breaks() {
        let m = StopMatcher::new(vec!["END".into()]);
        let (t, e) = ends(&["E", "x"]);
        assert_eq!(m.scan(&t, &e), StopScan::Release(2));
    }

    #[test]
    fn stop_spanning_pieces_is_cut() {
        let m = StopMatcher::new(vec!["\n\n".into(), "END".into()]);
        let (t, e) = ends(&["one", " E", "ND", " tail"]);
        assert_eq!(m.scan(&t, &e), StopScan::Stopped { cut: 4 });
    }

    #[test]
    fn earliest_stop_wins() {
        let m = StopMatcher::new(vec!["b".into(), "a".into()]);
        assert_eq!(m.scan("xab", &[3]), StopScan::Stopped { cut: 1 });
    }

    #[test]
    fn multibyte_text_never_splits_a_char() {
        let m = StopMatcher::new(vec!["é!".into()]);
        let (t, e) = ends(&["caf", "é"]);
        assert_eq!(m.scan(&t, &e), StopScan::Release(1));
    }
}
