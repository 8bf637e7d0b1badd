//! The hot-expert replication manager on in-process CPU ranks: a served-like workload with a
//! rebalance every few steps gives the same greedy tokens and logits, bit for bit, as the same
//! workload without rebalancing, with weights moving while sequences are mid-generation; a
//! migration copies exactly the slots that change, with the bytes the plan says.

mod common;

use common::*;
use std::sync::Arc;
use switchyard::backend::cpu::sample::argmax;
use switchyard::cluster::{ClusterExecutor, ClusterSpec};
use switchyard::comm::World;
use switchyard::engine::{Engine, Executor, GenerateOptions};
use switchyard::layout::PlacementSpec;
use switchyard::model::{Model, ModelSource, StepBatch};
use switchyard::parallel::{ParallelExecutor, ParallelPlan, RankContext, RankDevices};
use switchyard::replication::{
    Directive, LayerMigration, MigrationChunk, RankReplica, ReplicationConfig, ReplicationStep,
};
use switchyard_experts::{moved_slots, Placement};

const BLOCK: usize = 4;
const MAX_NEW: usize = 14;

/// A rebalance every 2 steps over the last 4, one layer copied per step.
fn eager() -> ReplicationConfig {
    ReplicationConfig {
        layers_per_step: 1,
        ..ReplicationConfig::every(2, 4)
    }
}

fn executor(
    p: &ParallelPlan,
    blocks: usize,
    replication: Option<ReplicationConfig>,
) -> ParallelExecutor {
    let (cfg, src) = ModelSource {
        dir: fixture_dir("mixtral"),
        random_weights: None,
    }
    .weights()
    .unwrap();
    let exec = ParallelExecutor::new(&cfg, src, p, blocks, BLOCK).unwrap();
    match replication {
        Some(r) => exec.with_replication(r).unwrap(),
        None => exec,
    }
}

/// Prompts of different lengths: the golden's and shifted copies of them.
fn prompts() -> Vec<Vec<u32>> {
    let g = golden("mixtral");
    let mut v = g.prompts.clone();
    v.extend(
        g.prompts
            .iter()
            .skip(1)
            .map(|p| p.iter().map(|t| (t * 7 + 11) % 512).collect::<Vec<u32>>()),
    );
    v
}

/// What a served run produced, step by step.
struct Served {
    tokens: Vec<Vec<u32>>,
    /// Every step's logits, in order.
    logits: Vec<Vec<f32>>,
    /// Per step: the replication record and how many sequences were mid-generation (had
    /// produced a token and were not done) when it ran.
    steps: Vec<(Option<ReplicationStep>, usize)>,
}

fn blocks_per_seq(prompts: &[Vec<u32>]) -> usize {
    prompts
        .iter()
        .map(|p| (p.len() + MAX_NEW).div_ceil(BLOCK))
        .max()
        .unwrap()
}

/// Continuous batching in miniature: sequence `i` joins at step `2 i` (prefill in one chunk),
/// then every running sequence decodes one token per step, greedy, until `MAX_NEW` tokens.
fn serve(exec: &mut dyn Executor, prompts: &[Vec<u32>]) -> Served {
    let per = blocks_per_seq(prompts) as u32;
    let n = prompts.len();
    let mut out = Served {
        tokens: vec![Vec::new(); n],
        logits: Vec::new(),
        steps: Vec::new(),
    };
    let mut cached = vec![0usize; n];
    for step in 0.. {
        let mut batch = StepBatch::default();
        let mut rows = Vec::new();
        for i in (0..n).filter(|&i| 2 * i <= step && out.tokens[i].len() < MAX_NEW) {
            let table: Vec<u32> = (i as u32 * per..(i as u32 + 1) * per).collect();
            match out.tokens[i].last() {
                None => batch.push_sequence(&prompts[i], 0, table, false),
                Some(&t) => batch.push_sequence(&[t], cached[i], table, false),
            }
            rows.push(i);
        }
        if rows.is_empty() {
            break;
        }
        let mid = rows.iter().filter(|&&i| !out.tokens[i].is_empty()).count();
        let o = exec
            .step(&batch)
            .unwrap_or_else(|e| panic!("step {step}: {e}"));
        for (k, &i) in rows.iter().enumerate() {
            cached[i] = prompts[i].len() + out.tokens[i].len();
            out.tokens[i].push(argmax(o.logits.row(k)));
        }
        out.logits.push(o.logits.into_vec());
        out.steps.push((o.replication, mid));
    }
    out
}

fn check_served_outputs_do_not_change(label: &str, p: ParallelPlan) {
    let prompts = prompts();
    let blocks = blocks_per_seq(&prompts) * prompts.len();
    let want = serve(&mut executor(&p, blocks, None), &prompts);
    let got = serve(&mut executor(&p, blocks, Some(eager())), &prompts);
    check_rebalanced_run(label, &want, &got);
}

/// `got` (served with rebalancing) has `want`'s tokens and logits bit for bit, and rebalanced
/// while sequences were mid-generation.
fn check_rebalanced_run(label: &str, want: &Served, got: &Served) {
    assert_eq!(got.tokens, want.tokens, "{label}: greedy tokens");
    assert_eq!(got.logits.len(), want.logits.len());
    for (s, (g, w)) in got.logits.iter().zip(&want.logits).enumerate() {
        assert!(
            g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{label}: logits of step {s} differ"
        );
    }
    let steps: Vec<(&ReplicationStep, usize)> = got
        .steps
        .iter()
        .map(|(r, mid)| (r.as_ref().expect("replication is on"), *mid))
        .collect();
    let last = steps.last().unwrap().0.status.clone();
    assert!(
        last.rebalances_total >= 2,
        "{label}: {} rebalances in {} steps",
        last.rebalances_total,
        steps.len()
    );
    assert!(last.slots_migrated_total > 0, "{label}: no slot moved");
    // Copies ran, and placements switched, while several sequences were mid-generation.
    let copying = steps
        .iter()
        .filter(|(r, mid)| r.migrated_layers > 0 && *mid >= 2)
        .count();
    let switches = steps
        .windows(2)
        .filter(|w| w[1].0.epoch != w[0].0.epoch && w[1].1 >= 2)
        .count();
    assert!(
        copying >= 2 && switches >= 1,
        "{label}: {copying} copying steps, {switches} switches mid-generation"
    );
    // The epoch moves one step at a time, after the copies.
    for w in steps.windows(2) {
        assert!(w[1].0.epoch == w[0].0.epoch || w[1].0.epoch == w[0].0.epoch + 1);
    }
    let s = &last;
    assert_eq!(s.replicas.len(), 2);
    for layer in &s.replicas {
        assert_eq!(
            layer.iter().sum::<u32>(),
            12,
            "{label}: every slot holds an expert"
        );
        assert!(layer.iter().all(|&r| r >= 1));
    }
    let done = last.last.as_ref().unwrap();
    assert!(
        done.max_imbalance_after() < done.max_imbalance_before(),
        "{label}: {done:?}"
    );
}

#[test]
fn served_outputs_do_not_change_under_ep4_redundant4() {
    check_served_outputs_do_not_change(
        "ep4-redundant4-scrambled",
        layout_plan(1, 4, 1, 4, scrambled(8, 4)),
    );
}

#[test]
fn served_outputs_do_not_change_under_tp2_ep4_pp2_redundant4() {
    check_served_outputs_do_not_change(
        "tp2-ep4-pp2-redundant4",
        layout_plan(2, 4, 2, 4, PlacementSpec::Contiguous),
    );
}

/// Runs `work` on a ClusterExecutor over two nodes on loopback: node 0 in this thread, node 1
/// (following it) in another, each with half of `p`'s ranks.
fn on_two_nodes<T>(
    p: &ParallelPlan,
    blocks: usize,
    work: impl FnOnce(&mut dyn Executor) -> T,
) -> T {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let source = ModelSource {
        dir: fixture_dir("mixtral"),
        random_weights: None,
    };
    let spec = move |node_rank| ClusterSpec {
        nodes: 2,
        node_rank,
        rendezvous: format!("127.0.0.1:{port}"),
        join_timeout: std::time::Duration::from_secs(60),
        comm_timeout: std::time::Duration::from_secs(60),
        devices: RankDevices::Cpu,
    };
    let follower = {
        let (source, p) = (source.clone(), p.clone());
        std::thread::spawn(move || switchyard::cluster::follow(&source, &p, &spec(1)))
    };
    let mut driver = ClusterExecutor::start(&source, p, blocks, BLOCK, &spec(0)).unwrap();
    let out = work(&mut driver);
    drop(driver);
    follower.join().unwrap().unwrap();
    out
}

#[test]
fn rebalancing_over_two_nodes_matches_one_process_without_it() {
    // The layout file's [experts] rebalance_every and window drive the cluster's manager.
    let mut layout = layout_plan(1, 4, 1, 4, scrambled(8, 4)).layout;
    layout.experts.rebalance_every = 2;
    layout.experts.window = 4;
    let p = ParallelPlan::from_layout(layout).unwrap();
    let prompts = prompts();
    let blocks = blocks_per_seq(&prompts) * prompts.len();
    let want = serve(&mut executor(&p, blocks, None), &prompts);
    let got = on_two_nodes(&p, blocks, |ex| serve(ex, &prompts));
    check_rebalanced_run("two nodes, ep4-redundant4-scrambled", &want, &got);
}

#[test]
fn migration_bytes_are_the_changed_slots_times_an_expert() {
    let p = layout_plan(1, 4, 1, 4, scrambled(8, 4));
    let prompts = prompts();
    let blocks = blocks_per_seq(&prompts) * prompts.len();
    let run = serve(&mut executor(&p, blocks, Some(eager())), &prompts);
    let cfg = switchyard::config::ModelConfig::from_dir(&fixture_dir("mixtral")).unwrap();
    let expert_bytes =
        (3 * cfg.moe.as_ref().unwrap().intermediate_size * cfg.hidden_size * 4) as u64;
    let mut checked = 0;
    for (r, _) in &run.steps {
        let s = &r.as_ref().unwrap().status;
        assert_eq!(s.expert_bytes, expert_bytes);
        assert_eq!(
            s.bytes_migrated_total,
            s.slots_migrated_total * expert_bytes
        );
        if !s.migrating {
            // Between migrations every copied byte has been counted by the communicators.
            assert_eq!(
                s.wire_bytes_total,
                s.slots_copied_remote_total * expert_bytes,
                "{s:?}"
            );
            checked += 1;
        }
    }
    let s = &run.steps.last().unwrap().0.as_ref().unwrap().status;
    assert!(s.slots_copied_remote_total > 0 && checked > 0);
}

#[test]
fn engine_generation_with_rebalancing_matches_one_rank() {
    let g = golden("mixtral");
    let source = ModelSource {
        dir: fixture_dir("mixtral"),
        random_weights: None,
    };
    let mut single = Engine::new(source.load().unwrap().model, 64, BLOCK);
    let p = layout_plan(1, 4, 1, 4, scrambled(8, 4));
    let replication = ReplicationConfig {
        layers_per_step: 1,
        ..ReplicationConfig::every(1, 8)
    };
    let mut engine = Engine::with_executor(Box::new(executor(&p, 16, Some(replication))));
    let opts = GenerateOptions {
        max_tokens: 12,
        sampling: Default::default(),
        seed: 0,
        ignore_eos: true,
    };
    for prompt in &g.prompts {
        assert_eq!(
            engine.generate(prompt, &opts).unwrap().tokens,
            single.generate(prompt, &opts).unwrap().tokens
        );
    }
}

/// Runs `directives` on the 4 ranks of `p` (each with its own shard) and returns, per rank,
/// the bytes it sent and its experts' weights, slot by slot, per sparse layer.
fn run_ranks(p: &ParallelPlan, directives: &[Directive]) -> Vec<(u64, Vec<Vec<Vec<f32>>>)> {
    let (cfg, src) = ModelSource {
        dir: fixture_dir("mixtral"),
        random_weights: None,
    }
    .weights()
    .unwrap();
    World::new(p.grid)
        .run(|comms| -> Result<_, String> {
            let rank = comms.coords.ep_rank;
            let ctx = RankContext::from(comms);
            let mut model = Model::load_shard(&cfg, src.as_ref(), p.shard(&cfg, rank).unwrap())
                .map_err(|e| e.to_string())?;
            let mut replica = RankReplica::default();
            let mut sent = 0;
            for d in directives {
                sent += replica
                    .apply(d, &mut model, ctx.ep.as_ref())
                    .map_err(|e| e.to_string())?;
            }
            Ok((sent, bank_weights(&model)))
        })
        .unwrap()
}

fn bank_weights(model: &Model) -> Vec<Vec<Vec<f32>>> {
    (0..model.config().num_layers)
        .filter_map(|l| model.ffn(l).filter(|b| b.is_sparse()))
        .map(|b| {
            (0..b.experts().len())
                .map(|s| b.experts().slot_weights(s).unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn a_migration_copies_only_changed_slots_and_ends_with_the_new_placements_weights() {
    let old_plan = layout_plan(1, 4, 1, 4, scrambled(8, 4));
    let cfg = switchyard::config::ModelConfig::from_dir(&fixture_dir("mixtral")).unwrap();
    let old = old_plan.placements(&cfg).unwrap();
    // Layer 0: rotate the slots by one rank; layer 1: swap two experts and move a replica.
    let mut l0 = old[0].as_ref().unwrap().slots().to_vec();
    l0.rotate_left(3);
    let mut l1 = old[1].as_ref().unwrap().slots().to_vec();
    l1.swap(0, 11);
    l1[4] = 6;
    let news = [
        Placement::from_slots(l0, 8, 4).unwrap(),
        Placement::from_slots(l1, 8, 4).unwrap(),
    ];
    let migrations: Vec<LayerMigration> = news
        .iter()
        .enumerate()
        .map(|(l, n)| LayerMigration::plan(l, old[l].as_ref().unwrap(), n.clone(), 2).unwrap())
        .collect();
    for (l, m) in migrations.iter().enumerate() {
        assert_eq!(
            m.transfers.len(),
            moved_slots(old[l].as_ref().unwrap(), &news[l])
        );
    }
    // Layer 1 in the first step, layer 0 in the second, then the switch.
    let chunk = |m: &LayerMigration| {
        Some(Arc::new(MigrationChunk {
            epoch: 1,
            layers: vec![m.clone()],
        }))
    };
    let directives = [
        Directive {
            epoch: 0,
            migrate: chunk(&migrations[1]),
        },
        Directive {
            epoch: 0,
            migrate: chunk(&migrations[0]),
        },
        Directive {
            epoch: 1,
            migrate: None,
        },
    ];
    let got = run_ranks(&old_plan, &directives);
    // What a fresh load under the new placements holds.
    let new_plan = layout_plan(
        1,
        4,
        1,
        4,
        PlacementSpec::Explicit(vec![news[0].slots().to_vec()]),
    );
    let want_l0 = run_ranks(&new_plan, &[]);
    let new_plan = layout_plan(
        1,
        4,
        1,
        4,
        PlacementSpec::Explicit(vec![news[1].slots().to_vec()]),
    );
    let want_l1 = run_ranks(&new_plan, &[]);
    let expert_bytes =
        (3 * cfg.moe.as_ref().unwrap().intermediate_size * cfg.hidden_size * 4) as u64;
    for (rank, (sent, banks)) in got.iter().enumerate() {
        assert_eq!(banks[0], want_l0[rank].1[0], "rank {rank} layer 0");
        assert_eq!(banks[1], want_l1[rank].1[1], "rank {rank} layer 1");
        let sends = migrations
            .iter()
            .flat_map(|m| &m.transfers)
            .filter(|t| t.from_slot / 3 == rank as u32 && t.to_slot / 3 != rank as u32)
            .count() as u64;
        assert_eq!(
            *sent,
            sends * expert_bytes,
            "rank {rank} sends exactly its remote copies"
        );
    }
    let remote: usize = migrations
        .iter()
        .map(LayerMigration::remote_transfers)
        .sum();
    assert_eq!(
        got.iter().map(|g| g.0).sum::<u64>(),
        remote as u64 * expert_bytes
    );
}

#[test]
fn a_switch_without_staged_shadows_is_refused() {
    let p = layout_plan(1, 4, 1, 0, PlacementSpec::Contiguous);
    let (cfg, src) = ModelSource {
        dir: fixture_dir("mixtral"),
        random_weights: None,
    }
    .weights()
    .unwrap();
    let errs = World::new(p.grid).run(|comms| -> Result<(), String> {
        let ctx = RankContext::from(comms);
        let mut model =
            Model::load_shard(&cfg, src.as_ref(), p.shard(&cfg, ctx.ep.rank()).unwrap()).unwrap();
        let err = RankReplica::default()
            .apply(
                &Directive {
                    epoch: 2,
                    migrate: None,
                },
                &mut model,
                ctx.ep.as_ref(),
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("asked to run epoch 2 while on epoch 0"),
            "{err}"
        );
        Ok(())
    });
    errs.unwrap();
}
