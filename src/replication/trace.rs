//! `RoutingRecorder`: writes the routing trace `switchyard rebalance-sim --trace` replays.
//!
//! One JSON line per step, `{"step": n, "layers": [[tokens per expert], ...]}`, with the MoE
//! layers in model order (dense layers route nothing and are left out), counts summed over the
//! EP group: exactly [`switchyard_experts::sim::TraceStep`].

use super::ReplicationError;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use switchyard_experts::sim::TraceStep;

/// Appends one trace line per step to a file (or any writer).
#[derive(Debug)]
pub struct RoutingRecorder<W: Write = BufWriter<File>> {
    out: W,
    path: PathBuf,
    step: u64,
}

impl RoutingRecorder<BufWriter<File>> {
    /// Creates (or truncates) the trace file `path`.
    pub fn create(path: &Path) -> Result<Self, ReplicationError> {
        let file = File::create(path).map_err(|source| ReplicationError::Trace {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
            step: 0,
        })
    }

    /// Opens `path` to append to an existing trace; steps count on from 0.
    pub fn append(path: &Path) -> Result<Self, ReplicationError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| ReplicationError::Trace {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
            step: 0,
        })
    }
}

impl<W: Write> RoutingRecorder<W> {
    /// A recorder writing to `out` (`name` labels errors).
    pub fn new(out: W, name: &str) -> Self {
        Self {
            out,
            path: PathBuf::from(name),
            step: 0,
        }
    }

    /// Writes one step's `expert_counts` (as in [`crate::model::StepOutput`]: per model layer,
    /// empty for dense layers) as the next line, and flushes it so the trace can be read while
    /// the server runs. A step whose model has no MoE layer writes nothing.
    pub fn record(&mut self, expert_counts: &[Vec<u64>]) -> Result<(), ReplicationError> {
        let layers: Vec<Vec<u64>> = expert_counts
            .iter()
            .filter(|c| !c.is_empty())
            .cloned()
            .collect();
        if layers.is_empty() {
            return Ok(());
        }
        let line = TraceStep {
            step: self.step,
            layers,
        };
        let fail = |source: std::io::Error| ReplicationError::Trace {
            path: self.path.clone(),
            source,
        };
        serde_json::to_writer(&mut self.out, &line).map_err(|e| fail(e.into()))?;
        self.out.write_all(b"\n").map_err(fail)?;
        self.out.flush().map_err(fail)?;
        self.step += 1;
        Ok(())
    }

    /// Steps written so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The writer back (flushed).
    pub fn into_inner(mut self) -> W {
        let _ = self.out.flush();
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_experts::sim::parse_trace_steps;

    #[test]
    fn lines_parse_back_as_the_simulator_reads_them() {
        let mut r = RoutingRecorder::new(Vec::new(), "memory");
        r.record(&[vec![], vec![3, 0, 1], vec![2, 2, 0]]).unwrap();
        r.record(&[vec![], vec![0, 4, 0], vec![1, 1, 2]]).unwrap();
        r.record(&[vec![], vec![], vec![]]).unwrap();
        let text = String::from_utf8(r.into_inner()).unwrap();
        let steps = parse_trace_steps(&text).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1].step, 1);
        assert_eq!(steps[1].layers, vec![vec![0, 4, 0], vec![1, 1, 2]]);
        let loads = switchyard_experts::parse_trace(&text).unwrap();
        assert_eq!(loads, vec![vec![3.0, 4.0, 1.0], vec![3.0, 3.0, 2.0]]);
    }
}
