//! Stop strings over streamed text: text is released only once no stop string can begin in
//! it, and the answer ends right before the first stop string.

/// Holds back the tail of the text that could still be the start of a stop string.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// Largest char boundary of `s` at or below `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl StopMatcher {
    /// A matcher for `stops` (non-empty strings).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            held: String::new(),
        }
    }

    /// Adds text; returns the text safe to release and whether a stop string was found (then
    /// the returned text ends right before it and nothing more may follow). With `check`
    /// false (before min_tokens) the text is released unchecked.
    pub fn push(&mut self, text: &str, check: bool) -> (String, bool) {
        self.held.push_str(text);
        if !check || self.stops.is_empty() {
            return (std::mem::take(&mut self.held), false);
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        let keep = self.stops.iter().map(String::len).max().unwrap_or(1) - 1;
        let cut = floor_boundary(&self.held, self.held.len().saturating_sub(keep));
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// Releases what is held (the answer ended without a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_string_split_over_pushes_is_found_and_cut() {
        let mut m = StopMatcher::new(vec!["STOP".into(), "é!".into()]);
        assert_eq!(m.push("abcST", true), ("ab".into(), false));
        assert_eq!(m.push("OPxyz", true), ("c".into(), true));
        let mut m = StopMatcher::new(vec!["xé!".into()]);
        let (a, _) = m.push("aé", true);
        let (b, hit) = m.push("b", true);
        assert_eq!((a + &b + &m.finish(), hit), ("aéb".into(), false));
    }
}
