//! The two primitives of DeepSeek's EPLB (github.com/deepseek-ai/EPLB, `eplb.py`), generalised
//! to ranks with spare capacity, plus a local-search refinement EPLB does not have.

/// EPLB `replicate_experts`: starting from one replica each, every extra replica goes to the
/// expert with the highest load per replica (ties to the lower index). Returns the replica count
/// per expert (sum = `n_physical`; requires `n_physical >= loads.len()`).
pub(crate) fn replicate(loads: &[f64], n_physical: usize) -> Vec<usize> {
    let mut counts = vec![1usize; loads.len()];
    for _ in loads.len()..n_physical {
        let mut best = 0usize;
        for e in 1..loads.len() {
            // a / ca > b / cb  <=>  a * cb > b * ca (no division, exact for integers).
            if loads[e] * counts[best] as f64 > loads[best] * counts[e] as f64 {
                best = e;
            }
        }
        counts[best] += 1;
    }
    counts
}

/// One item to pack: a replica of `expert` carrying `weight`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    pub expert: u32,
    pub weight: f64,
}

/// EPLB `balanced_packing` with capacities: items, heaviest first (ties to the lower expert id),
/// each go to the least-loaded pack that has a free place and does not already hold a replica of
/// the same expert (ties to the lower pack); a pack already holding the expert is used only when
/// nothing else is free. Then [`refine`]. Returns the items of every pack.
pub(crate) fn pack(mut items: Vec<Item>, n_packs: usize, capacity: usize) -> Vec<Vec<Item>> {
    items.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.expert.cmp(&b.expert)));
    let mut packs: Vec<Vec<Item>> = vec![Vec::with_capacity(capacity); n_packs];
    let mut load = vec![0.0f64; n_packs];
    for item in items {
        let mut best: Option<(bool, usize)> = None;
        for p in 0..n_packs {
            if packs[p].len() >= capacity {
                continue;
            }
            let dup = packs[p].iter().any(|i| i.expert == item.expert);
            best = match best {
                None => Some((dup, p)),
                Some((bdup, b)) => {
                    if (dup, load[p]) < (bdup, load[b]) {
                        Some((dup, p))
                    } else {
                        Some((bdup, b))
                    }
                }
            };
        }
        // The caller guarantees n_packs * capacity >= items; a full set of packs drops nothing
        // because this branch is then unreachable.
        if let Some((_, p)) = best {
            load[p] += item.weight;
            packs[p].push(item);
        }
    }
    refine(&mut packs, capacity);
    packs
}

fn pack_load(p: &[Item]) -> f64 {
    p.iter().map(|i| i.weight).sum()
}

/// Local search: while it lowers the heaviest pack, move one of its items to a pack with a free
/// place, or swap it with a lighter item of another pack (never putting two replicas of one
/// expert in a pack). Takes the best single move each round; deterministic; bounded rounds.
pub(crate) fn refine(packs: &mut [Vec<Item>], capacity: usize) {
    let n = packs.len();
    if n < 2 {
        return;
    }
    let mut load: Vec<f64> = packs.iter().map(|p| pack_load(p)).collect();
    let max_rounds = 4 * packs.iter().map(Vec::len).sum::<usize>() + 8;
    for _ in 0..max_rounds {
        let mut a = 0usize;
        for p in 1..n {
            if load[p] > load[a] {
                a = p;
            }
        }
        let top = load[a];
        // (new max of the two packs, pack b, index in a, index in b or None for a move)
        let mut best: Option<(f64, usize, usize, Option<usize>)> = None;
        for (ia, item_a) in packs[a].iter().enumerate() {
            for b in 0..n {
                if b == a {
                    continue;
                }
                let holds = |p: &[Item], e: u32, except: Option<usize>| {
                    p.iter()
                        .enumerate()
                        .any(|(k, i)| i.expert == e && Some(k) != except)
                };
                if packs[b].len() < capacity && !holds(&packs[b], item_a.expert, None) {
                    let m = (top - item_a.weight).max(load[b] + item_a.weight);
                    if best.is_none_or(|(bm, ..)| m < bm) {
                        best = Some((m, b, ia, None));
                    }
                }
                for (ib, item_b) in packs[b].iter().enumerate() {
                    if item_b.weight >= item_a.weight
                        || holds(&packs[b], item_a.expert, Some(ib))
                        || holds(&packs[a], item_b.expert, Some(ia))
                    {
                        continue;
                    }
                    let d = item_a.weight - item_b.weight;
                    let m = (top - d).max(load[b] + d);
                    if best.is_none_or(|(bm, ..)| m < bm) {
                        best = Some((m, b, ia, Some(ib)));
                    }
                }
            }
        }
        // Accept only a strict improvement, by a margin that float noise cannot fake.
        let Some((m, b, ia, ib)) = best.filter(|&(m, ..)| m < top * (1.0 - 1e-12)) else {
            break;
        };
        let _ = m;
        let item_a = packs[a][ia];
        match ib {
            None => {
                packs[a].remove(ia);
                packs[b].push(item_a);
            }
            Some(ib) => {
                let item_b = packs[b][ib];
                packs[a][ia] = item_b;
                packs[b][ib] = item_a;
            }
        }
        load[a] = pack_load(&packs[a]);
        load[b] = pack_load(&packs[b]);
    }
}
