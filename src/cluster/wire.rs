//! The control connection between node 0 and each other node (the rendezvous socket, kept
//! open): length-prefixed frames, JSON for the rendezvous messages and a plain little-endian
//! encoding for step batches and rank outputs.
//!
//! ```text
//! kind u8 | len u64 | body (len bytes)
//! ```

use crate::model::{RankOutput, StepBatch};
use crate::ops::QueryPos;
use crate::parallel::{RankJob, RankReport};
use crate::replication::{Directive, LayerMigration, MigrationChunk, Transfer};
use crate::tensor::Tensor;
use std::io::{self, Read, Write};
use std::sync::Arc;
use switchyard_experts::Placement;

/// What a control frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Node → node 0: the rendezvous hello (JSON).
    Hello = 1,
    /// Node 0 → node: the address book and run parameters (JSON).
    Welcome = 2,
    /// Node 0 → node: the job is off, and why (text).
    Reject = 3,
    /// Node → node 0: its ranks have loaded.
    Ready = 4,
    /// Node → node 0: its ranks could not load (text).
    Failed = 5,
    /// Node 0 → node: a step (step id, batch, replication directive).
    Step = 6,
    /// Node → node 0: one rank's output of a step.
    Report = 7,
    /// Node 0 → node: the job is done.
    Stop = 8,
}

impl Kind {
    fn from_u8(k: u8) -> Option<Self> {
        use Kind::*;
        [Hello, Welcome, Reject, Ready, Failed, Step, Report, Stop]
            .into_iter()
            .find(|x| *x as u8 == k)
    }
}

/// Writes one frame.
pub(crate) fn send(w: &mut impl Write, kind: Kind, body: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(9 + body.len());
    buf.push(kind as u8);
    buf.extend_from_slice(&(body.len() as u64).to_le_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame; `Ok(None)` when the peer closed the connection.
pub(crate) fn recv(r: &mut impl Read) -> io::Result<Option<(Kind, Vec<u8>)>> {
    let mut k = [0u8; 1];
    match r.read_exact(&mut k) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    }
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    let kind = Kind::from_u8(k[0])
        .ok_or_else(|| invalid(format!("unknown control frame kind {}", k[0])))?;
    let len = usize::try_from(len).map_err(|_| invalid(format!("control frame of {len} bytes")))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some((kind, body)))
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Little-endian writer.
#[derive(Default)]
pub(crate) struct Enc(pub Vec<u8>);

impl Enc {
    pub fn u8(&mut self, x: u8) -> &mut Self {
        self.0.push(x);
        self
    }
    pub fn u64(&mut self, x: u64) -> &mut Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    pub fn usize(&mut self, x: usize) -> &mut Self {
        self.u64(x as u64)
    }
    pub fn usizes(&mut self, xs: &[usize]) -> &mut Self {
        self.usize(xs.len());
        xs.iter().for_each(|&x| {
            self.usize(x);
        });
        self
    }
    pub fn u64s(&mut self, xs: &[u64]) -> &mut Self {
        self.usize(xs.len());
        xs.iter().for_each(|&x| {
            self.u64(x);
        });
        self
    }
    pub fn u32s(&mut self, xs: &[u32]) -> &mut Self {
        self.usize(xs.len());
        xs.iter()
            .for_each(|&x| self.0.extend_from_slice(&x.to_le_bytes()));
        self
    }
    pub fn f32s(&mut self, xs: &[f32]) -> &mut Self {
        self.usize(xs.len());
        xs.iter()
            .for_each(|&x| self.0.extend_from_slice(&x.to_le_bytes()));
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.usize(s.len());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
}

/// Little-endian reader over a frame's body; every read checks the length.
pub(crate) struct Dec<'a>(pub &'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(invalid(format!(
                "frame ends {} bytes early",
                n - self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    pub fn usize(&mut self) -> io::Result<usize> {
        let x = self.u64()?;
        usize::try_from(x).map_err(|_| invalid(format!("{x} does not fit usize")))
    }
    fn len(&mut self, elem: usize) -> io::Result<usize> {
        let n = self.usize()?;
        if n.saturating_mul(elem) > self.0.len() {
            return Err(invalid(format!(
                "{n} elements of {elem} bytes but {} bytes left",
                self.0.len()
            )));
        }
        Ok(n)
    }
    pub fn usizes(&mut self) -> io::Result<Vec<usize>> {
        let n = self.len(8)?;
        (0..n).map(|_| self.usize()).collect()
    }
    pub fn u64s(&mut self) -> io::Result<Vec<u64>> {
        let n = self.len(8)?;
        (0..n).map(|_| self.u64()).collect()
    }
    pub fn u32s(&mut self) -> io::Result<Vec<u32>> {
        let n = self.len(4)?;
        Ok(self
            .take(4 * n)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
    pub fn f32s(&mut self) -> io::Result<Vec<f32>> {
        let n = self.len(4)?;
        Ok(self
            .take(4 * n)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
    pub fn str(&mut self) -> io::Result<String> {
        let n = self.len(1)?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| invalid(e.to_string()))
    }
}

/// A step's job as bytes: the step id, the batch, then the replication directive.
pub(crate) fn encode_job(job: &RankJob) -> Vec<u8> {
    let mut e = Enc::default();
    let b = &job.batch;
    e.u64(job.step).u32s(&b.tokens);
    let flat: Vec<usize> = b.queries.iter().flat_map(|q| [q.seq, q.pos]).collect();
    e.usizes(&flat).usize(b.tables.len());
    for t in &b.tables {
        e.u32s(t);
    }
    e.usizes(&b.logit_rows);
    encode_directive(&mut e, &job.directive);
    e.0
}

fn encode_directive(e: &mut Enc, d: &Directive) {
    e.u64(d.epoch);
    let Some(chunk) = &d.migrate else {
        e.u8(0);
        return;
    };
    e.u8(1).u64(chunk.epoch).usize(chunk.layers.len());
    for l in &chunk.layers {
        let p = &l.placement;
        e.usize(l.layer)
            .usize(p.n_logical())
            .usize(p.n_ranks())
            .u32s(p.slots());
        let flat: Vec<u32> = l
            .transfers
            .iter()
            .flat_map(|t| [t.expert, t.from_slot, t.to_slot])
            .collect();
        e.u32s(&flat);
    }
}

/// The job of [`encode_job`]'s bytes.
pub(crate) fn decode_job(bytes: &[u8]) -> io::Result<RankJob> {
    let mut d = Dec(bytes);
    let step = d.u64()?;
    let tokens = d.u32s()?;
    let queries = d
        .usizes()?
        .chunks_exact(2)
        .map(|c| QueryPos {
            seq: c[0],
            pos: c[1],
        })
        .collect();
    let n = d.usize()?;
    let tables = (0..n).map(|_| d.u32s()).collect::<io::Result<_>>()?;
    let logit_rows = d.usizes()?;
    let batch = StepBatch {
        tokens,
        queries,
        tables,
        logit_rows,
    };
    Ok(RankJob {
        step,
        batch: Arc::new(batch),
        directive: decode_directive(&mut d)?,
    })
}

fn decode_directive(d: &mut Dec) -> io::Result<Directive> {
    let epoch = d.u64()?;
    if d.u8()? == 0 {
        return Ok(Directive {
            epoch,
            migrate: None,
        });
    }
    let chunk_epoch = d.u64()?;
    let n = d.usize()?;
    let layers = (0..n)
        .map(|_| {
            let (layer, n_logical, n_ranks) = (d.usize()?, d.usize()?, d.usize()?);
            let placement = Placement::from_slots(d.u32s()?, n_logical, n_ranks)
                .map_err(|e| invalid(format!("layer {layer}'s new placement: {e}")))?;
            let transfers = d
                .u32s()?
                .chunks_exact(3)
                .map(|t| Transfer {
                    expert: t[0],
                    from_slot: t[1],
                    to_slot: t[2],
                })
                .collect();
            Ok(LayerMigration {
                layer,
                placement,
                transfers,
            })
        })
        .collect::<io::Result<_>>()?;
    Ok(Directive {
        epoch,
        migrate: Some(Arc::new(MigrationChunk {
            epoch: chunk_epoch,
            layers,
        })),
    })
}

/// One rank's report of a step: its global rank, the step, the bytes its communicators sent
/// (and how many of them migrated experts), and its output or error.
pub(crate) fn encode_report(r: &RankReport) -> Vec<u8> {
    let host;
    let output = match &r.output {
        // A GPU rank's logits stay on its device; the wire carries host values.
        Ok(o) if o.logits.as_ref().is_some_and(|(_, t)| t.is_cuda()) => {
            let mut o = o.clone();
            host = match o.logits.take().map(|(i, t)| t.into_cpu().map(|t| (i, t))) {
                Some(Ok(l)) => {
                    o.logits = Some(l);
                    Ok(o)
                }
                Some(Err(e)) => Err(format!("copying the logits to the host: {e}")),
                None => Ok(o),
            };
            &host
        }
        output => output,
    };
    let mut e = Enc::default();
    e.usize(r.rank).u64(r.step).u64(r.bytes).u64(r.migrated);
    match output {
        Err(msg) => {
            e.u8(0).str(msg);
        }
        Ok(o) => {
            e.u8(1).usize(o.ep_rank);
            match &o.logits {
                None => {
                    e.u8(0);
                }
                Some((index, t)) => {
                    e.u8(1).usizes(index).usizes(t.dims()).f32s(t.as_slice());
                }
            }
            e.usize(o.expert_counts.len());
            for (layer, counts) in &o.expert_counts {
                e.usize(*layer).u64s(counts);
            }
            let (layers, rows): (Vec<usize>, Vec<u64>) = o.rows_computed.iter().copied().unzip();
            e.usizes(&layers)
                .u64s(&rows)
                .u64(o.a2a_predicted_bytes)
                .u64(o.a2a_measured_bytes);
            match o.work_ticks {
                None => e.u8(0),
                Some((a, b)) => e.u8(1).u64(a).u64(b),
            };
        }
    }
    e.0
}

/// The report of [`encode_report`]'s bytes.
pub(crate) fn decode_report(bytes: &[u8]) -> io::Result<RankReport> {
    let mut d = Dec(bytes);
    let (rank, step, bytes, migrated) = (d.usize()?, d.u64()?, d.u64()?, d.u64()?);
    if d.u8()? == 0 {
        return Ok(RankReport {
            rank,
            step,
            bytes,
            migrated,
            output: Err(d.str()?),
        });
    }
    let ep_rank = d.usize()?;
    let logits = match d.u8()? {
        0 => None,
        _ => {
            let index = d.usizes()?;
            let dims = d.usizes()?;
            let data = d.f32s()?;
            let t = Tensor::from_f32(dims, data).map_err(|e| invalid(e.to_string()))?;
            Some((index, t))
        }
    };
    let n = d.usize()?;
    let expert_counts = (0..n)
        .map(|_| Ok((d.usize()?, d.u64s()?)))
        .collect::<io::Result<_>>()?;
    let layers = d.usizes()?;
    let rows = d.u64s()?;
    let (a2a_predicted_bytes, a2a_measured_bytes) = (d.u64()?, d.u64()?);
    let work_ticks = match d.u8()? {
        0 => None,
        _ => Some((d.u64()?, d.u64()?)),
    };
    // Fields a later RankOutput adds (none the driver's assembly reads) take their defaults.
    #[allow(clippy::needless_update)]
    let output = RankOutput {
        ep_rank,
        logits,
        expert_counts,
        rows_computed: layers.into_iter().zip(rows).collect(),
        a2a_predicted_bytes,
        a2a_measured_bytes,
        work_ticks,
        ..RankOutput::default()
    };
    Ok(RankReport {
        rank,
        step,
        bytes,
        migrated,
        output: Ok(output),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_and_reports_round_trip() {
        let mut b = StepBatch::default();
        b.push_sequence(&[5, 6, 7], 0, vec![0, 3], true);
        b.push_sequence(&[9], 4, vec![1, 2], false);
        let old = Placement::from_slots(vec![0, 1, 2, 1], 3, 2).unwrap();
        let new = Placement::from_slots(vec![0, 1, 2, 0], 3, 2).unwrap();
        let migration = LayerMigration::plan(1, &old, new, 1).unwrap();
        assert_eq!(migration.transfers.len(), 1);
        let directive = Directive {
            epoch: 4,
            migrate: Some(Arc::new(MigrationChunk {
                epoch: 5,
                layers: vec![migration],
            })),
        };
        for directive in [Directive::default(), directive] {
            let job = RankJob {
                step: 7,
                batch: Arc::new(b.clone()),
                directive,
            };
            let back = decode_job(&encode_job(&job)).unwrap();
            assert_eq!(back.step, 7);
            let (x, y) = (&back.batch, &job.batch);
            assert_eq!(
                (&x.tokens, &x.queries, &x.tables, &x.logit_rows),
                (&y.tokens, &y.queries, &y.tables, &y.logit_rows)
            );
            assert_eq!(back.directive.epoch, job.directive.epoch);
            assert_eq!(back.directive.migrate, job.directive.migrate);
        }

        #[allow(clippy::needless_update)]
        let out = RankOutput {
            ep_rank: 1,
            logits: Some((
                vec![0, 2],
                Tensor::from_f32([2, 3], vec![1.0, -2.5, 3.0, f32::MIN_POSITIVE, 0.0, 7.0])
                    .unwrap(),
            )),
            expert_counts: vec![(1, vec![3, 0, 4])],
            rows_computed: vec![(1, 7)],
            a2a_predicted_bytes: 10,
            a2a_measured_bytes: 12,
            work_ticks: Some((3, 9)),
            ..RankOutput::default()
        };
        let report = |rank, output| RankReport {
            rank,
            step: 7,
            output,
            bytes: 99,
            migrated: 40,
        };
        let r = decode_report(&encode_report(&report(3, Ok(out.clone())))).unwrap();
        assert_eq!((r.rank, r.step, r.bytes, r.migrated), (3, 7, 99, 40));
        let got = r.output.unwrap();
        assert_eq!(format!("{got:?}"), format!("{out:?}"));
        let e = decode_report(&encode_report(&report(2, Err("boom".into())))).unwrap();
        assert_eq!(e.output.unwrap_err(), "boom");
        assert!(decode_report(&[1, 2, 3]).is_err());
    }
}
