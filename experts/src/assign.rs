//! Stickiness: relabel the packs produced by the balancer so they overlap the current placement
//! as much as possible. Permuting whole ranks (or whole nodes) and the slots inside a rank never
//! changes any rank's load, so these are free choices among equal-cost answers.

use crate::placement::{Placement, PlacementError, EMPTY_SLOT};

/// Maximum-weight perfect assignment on a square matrix (`gain[i][j]`: gain of giving row `i`
/// column `j`). Returns `col_of_row`. Hungarian algorithm with potentials, O(n^3); deterministic.
pub(crate) fn max_assignment(gain: &[Vec<i64>]) -> Vec<usize> {
    let n = gain.len();
    if n == 0 {
        return Vec::new();
    }
    let max = gain.iter().flatten().copied().max().unwrap_or(0);
    // Minimise cost = max - gain, 1-indexed arrays as in the textbook formulation.
    let cost = |i: usize, j: usize| max - gain[i - 1][j - 1];
    let inf = i64::MAX / 4;
    let mut u = vec![0i64; n + 1];
    let mut v = vec![0i64; n + 1];
    let mut p = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![inf; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = inf;
            let mut j1 = 0usize;
            for j in 1..=n {
                if !used[j] {
                    let cur = cost(i0, j) - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut col_of_row = vec![0usize; n];
    for j in 1..=n {
        if p[j] > 0 {
            col_of_row[p[j] - 1] = j - 1;
        }
    }
    col_of_row
}

/// Largest matrix solved exactly; larger ones use [`greedy_assignment`] (O(n^2 log n)).
const EXACT_MAX: usize = 16;

/// Maximum-weight assignment: exact up to 16 x 16, greedy above. `sizes_row[i]`/`sizes_col[j]`
/// break ties so that a row equal to a column (gain = both sizes) is matched with it first.
pub(crate) fn assignment(
    gain: &[Vec<i64>],
    sizes_row: &[usize],
    sizes_col: &[usize],
) -> Vec<usize> {
    if gain.len() <= EXACT_MAX {
        max_assignment(gain)
    } else {
        greedy_assignment(gain, sizes_row, sizes_col)
    }
}

/// Greedy matching: pairs by gain (descending), then size difference (ascending), then row,
/// then column; each pair taken if both ends are free. Identical sets always pair up.
pub(crate) fn greedy_assignment(
    gain: &[Vec<i64>],
    sizes_row: &[usize],
    sizes_col: &[usize],
) -> Vec<usize> {
    let n = gain.len();
    let mut pairs: Vec<(i64, usize, usize, usize)> = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            pairs.push((-gain[i][j], sizes_row[i].abs_diff(sizes_col[j]), i, j));
        }
    }
    pairs.sort_unstable();
    let mut col_of_row = vec![usize::MAX; n];
    let mut col_used = vec![false; n];
    for (_, _, i, j) in pairs {
        if col_of_row[i] == usize::MAX && !col_used[j] {
            col_of_row[i] = j;
            col_used[j] = true;
        }
    }
    col_of_row
}

/// Size of the multiset intersection of two sorted expert lists (empty slots ignored).
pub(crate) fn overlap(a: &[u32], b: &[u32]) -> i64 {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                if a[i] != EMPTY_SLOT {
                    n += 1;
                }
                i += 1;
                j += 1;
            }
        }
    }
    n
}

/// Orders the experts `new` (a multiset) into `current.len()` slots: an expert stays in a slot
/// that already holds it; the rest fill the other slots in ascending order; the surplus slots
/// are empty.
pub(crate) fn order_slots(new: &[u32], current: &[u32]) -> Vec<u32> {
    let mut left: Vec<u32> = new.to_vec();
    left.sort_unstable();
    let mut out = vec![EMPTY_SLOT; current.len()];
    for (s, &c) in current.iter().enumerate() {
        if c == EMPTY_SLOT {
            continue;
        }
        if let Ok(k) = left.binary_search(&c) {
            out[s] = c;
            left.remove(k);
        }
    }
    let mut rest = left.into_iter();
    for slot in out.iter_mut() {
        if *slot == EMPTY_SLOT {
            match rest.next() {
                Some(e) => *slot = e,
                None => break,
            }
        }
    }
    out
}

/// Relabels nodes (blocks of `node_size` ranks), then ranks inside them, to overlap `current`
/// most, then orders each rank's slots to keep experts where they are.
pub(crate) fn stick(
    rank_sets: Vec<Vec<u32>>,
    current: &Placement,
    node_size: usize,
) -> Result<Placement, PlacementError> {
    let n_ranks = rank_sets.len();
    let cur_sets: Vec<Vec<u32>> = (0..n_ranks)
        .map(|r| {
            let mut v: Vec<u32> = current
                .rank_experts(r)
                .iter()
                .copied()
                .filter(|&e| e != EMPTY_SLOT)
                .collect();
            v.sort_unstable();
            v
        })
        .collect();
    let n_nodes = n_ranks / node_size;
    let node_set = |sets: &[Vec<u32>], n: usize| {
        let mut v: Vec<u32> = sets[n * node_size..(n + 1) * node_size]
            .iter()
            .flatten()
            .copied()
            .collect();
        v.sort_unstable();
        v
    };
    let node_gain: Vec<Vec<i64>> = (0..n_nodes)
        .map(|a| {
            let na = node_set(&rank_sets, a);
            (0..n_nodes)
                .map(|b| overlap(&na, &node_set(&cur_sets, b)))
                .collect()
        })
        .collect();
    let node_sizes = |sets: &[Vec<u32>]| -> Vec<usize> {
        (0..n_nodes)
            .map(|n| {
                sets[n * node_size..(n + 1) * node_size]
                    .iter()
                    .map(Vec::len)
                    .sum()
            })
            .collect()
    };
    let node_target = assignment(&node_gain, &node_sizes(&rank_sets), &node_sizes(&cur_sets));
    let mut target_rank = vec![0usize; n_ranks];
    for a in 0..n_nodes {
        let b = node_target[a];
        let gain: Vec<Vec<i64>> = (0..node_size)
            .map(|i| {
                (0..node_size)
                    .map(|j| overlap(&rank_sets[a * node_size + i], &cur_sets[b * node_size + j]))
                    .collect()
            })
            .collect();
        let rs: Vec<usize> = (0..node_size)
            .map(|i| rank_sets[a * node_size + i].len())
            .collect();
        let cs: Vec<usize> = (0..node_size)
            .map(|j| cur_sets[b * node_size + j].len())
            .collect();
        for (i, j) in assignment(&gain, &rs, &cs).into_iter().enumerate() {
            target_rank[a * node_size + i] = b * node_size + j;
        }
    }
    let spr = current.slots_per_rank();
    let mut slots = vec![EMPTY_SLOT; current.n_slots()];
    for (r, set) in rank_sets.iter().enumerate() {
        let t = target_rank[r];
        slots[t * spr..(t + 1) * spr].copy_from_slice(&order_slots(set, current.rank_experts(t)));
    }
    Placement::from_slots(slots, current.n_logical(), n_ranks)
}
