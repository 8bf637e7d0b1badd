//! `follow`: a node other than 0 — its ranks run the step plans node 0 sends until it says stop.

use super::executor::{fabric_spec, hello};
use super::node::{Event, LocalRanks};
use super::rendezvous;
use super::wire::{self, Kind};
use super::{ClusterError, ClusterSpec};
use crate::comm::tcp::Fabric;
use crate::model::ModelSource;
use crate::parallel::ParallelPlan;
use std::io::BufReader;
use std::net::TcpStream;
use std::sync::mpsc::{channel, Receiver};

/// Joins node 0's job and runs this node's ranks until node 0 stops it (`Ok`), calls it off,
/// or goes away (an error saying which).
pub fn follow(
    source: &ModelSource,
    plan: &ParallelPlan,
    spec: &ClusterSpec,
) -> Result<(), ClusterError> {
    let node = spec.node_rank;
    let peer = |why: String| ClusterError::Peer { node, why };
    if spec.is_driver() {
        return Err(ClusterError::Spec(
            "node 0 drives; it does not follow".into(),
        ));
    }
    let (config, weights) = source.weights()?;
    plan.validate(&config)?;
    let joined = rendezvous::join(spec, hello(source, plan, spec)?)?;
    let control = joined
        .control
        .into_iter()
        .next()
        .expect("one connection to node 0");
    let run = joined.welcome.run;
    let comms = Fabric::connect(
        &fabric_spec(plan, spec, joined.welcome.session),
        joined.data,
        &joined.welcome.book,
    )?;
    let (events_tx, events) = channel();
    let local = match LocalRanks::start(
        &config,
        weights,
        plan,
        comms,
        run.num_blocks,
        run.block_size,
        &spec.devices,
        events_tx,
    ) {
        Ok(l) => l,
        Err(e) => {
            let _ = wire::send(&mut &control, Kind::Failed, e.as_bytes());
            return Err(peer(format!("loading this node's ranks: {e}")));
        }
    };
    wire::send(&mut &control, Kind::Ready, &[])
        .map_err(|e| peer(format!("telling node 0 this node is ready: {e}")))?;
    let writer = control.try_clone().map_err(|e| peer(e.to_string()))?;
    let forward = std::thread::Builder::new()
        .name("control-to-0".into())
        .spawn(move || forward_reports(events, writer))
        .map_err(|e| peer(e.to_string()))?;
    let mut reader = BufReader::new(control);
    let outcome = loop {
        match wire::recv(&mut reader) {
            Ok(Some((Kind::Step, body))) => match wire::decode_job(&body) {
                Ok(job) => {
                    if !local.submit(&job) {
                        break Err(peer(format!(
                            "a rank of this node stopped before step {}",
                            job.step
                        )));
                    }
                }
                Err(e) => break Err(peer(format!("a step from node 0 does not decode: {e}"))),
            },
            Ok(Some((Kind::Stop, _))) => break Ok(()),
            Ok(Some((Kind::Reject, why))) => {
                break Err(ClusterError::Refused {
                    node,
                    why: String::from_utf8_lossy(&why).into_owned(),
                })
            }
            Ok(Some((k, _))) => break Err(peer(format!("node 0 sent an unexpected {k:?} frame"))),
            Ok(None) => {
                break Err(peer(
                    "node 0 (the driver) hung up: it stopped or died".into(),
                ))
            }
            Err(e) => {
                break Err(peer(format!(
                    "the connection to node 0 (the driver) failed: {e}"
                )))
            }
        }
    };
    let clean = outcome.is_ok();
    local.stop(clean);
    if clean {
        let _ = forward.join();
    }
    outcome
}

/// Sends every local rank's report to node 0 until the ranks end or the connection breaks.
fn forward_reports(events: Receiver<Event>, control: TcpStream) {
    for event in events {
        if let Event::Report(r) = event {
            if wire::send(&mut &control, Kind::Report, &wire::encode_report(&r)).is_err() {
                return;
            }
        }
    }
}
