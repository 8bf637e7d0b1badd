//! "Did you mean": the existing tensor names closest to a missing one.

/// Up to `k` names from `candidates` closest to `wanted` (edit distance), closest first.
pub(crate) fn closest<'a>(
    wanted: &str,
    candidates: impl Iterator<Item = &'a str>,
    k: usize,
) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> =
        candidates.map(|c| (edit_distance(wanted, c), c)).collect();
    scored.sort_unstable();
    // A name that shares almost nothing is no hint.
    let limit = wanted.len().max(8) / 2;
    scored
        .into_iter()
        .filter(|&(d, _)| d <= limit)
        .take(k)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// Levenshtein distance over bytes (tensor names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_basics() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn picks_the_closest_three() {
        let names = [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight",
            "model.layers.0.self_attn.o_proj.weight",
            "lm_head.weight",
        ];
        let got = closest(
            "model.layers.0.self_attn.q_proj.bias",
            names.iter().copied(),
            3,
        );
        assert_eq!(got[0], "model.layers.0.self_attn.q_proj.weight");
        assert_eq!(got.len(), 3);
        assert!(closest("zzzzzzzzzzzzzzzzzzzz", names.iter().copied(), 3).is_empty());
    }
}
