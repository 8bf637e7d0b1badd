//! The frames on a node-to-node data connection: a fixed header, then the payload.
//!
//! ```text
//! kind u8 | group u8 | op u8 | 0u8 | src u32 | dst u32 | len u64 | payload (len bytes)
//! ```
//! all little-endian; `src` and `dst` are global ranks. A `Hangup` frame (no payload) tells the
//! receiving node that `src` dropped its communicator of `group`, so `dst` fails at once instead
//! of waiting for the timeout.

use crate::comm::Op;
use std::io::{self, Read, Write};

/// Which group a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum GroupKind {
    /// Tensor-parallel group (attention heads).
    Tp,
    /// Expert-parallel group (the pipeline stage).
    Ep,
    /// Pipeline group (one rank per stage).
    Pp,
}

impl GroupKind {
    pub(crate) const ALL: [GroupKind; 3] = [GroupKind::Tp, GroupKind::Ep, GroupKind::Pp];

    pub(crate) fn name(self) -> &'static str {
        match self {
            GroupKind::Tp => "tp",
            GroupKind::Ep => "ep",
            GroupKind::Pp => "pp",
        }
    }

    fn code(self) -> u8 {
        match self {
            GroupKind::Tp => 0,
            GroupKind::Ep => 1,
            GroupKind::Pp => 2,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.code() == c)
    }
}

const OPS: [Op; 7] = [
    Op::AllReduce,
    Op::ReduceScatter,
    Op::AllGather,
    Op::AllToAll,
    Op::PointToPoint,
    Op::Broadcast,
    Op::Barrier,
];

fn op_code(op: Op) -> u8 {
    OPS.iter()
        .position(|&o| o == op)
        .expect("every op is listed") as u8
}

/// What a frame carries.
#[derive(Debug)]
pub(crate) enum Frame {
    /// One collective's bytes from `src` to `dst`.
    Data {
        group: GroupKind,
        op: Op,
        src: u32,
        dst: u32,
        payload: Vec<u8>,
    },
    /// `src` dropped its communicator of `group`.
    Hangup {
        group: GroupKind,
        src: u32,
        dst: u32,
    },
}

const HEADER: usize = 20;

/// Writes one frame as a single buffer (one lock hold, one `write_all`).
pub(crate) fn write_frame(w: &mut impl Write, frame: &Frame) -> io::Result<()> {
    let (kind, group, op, src, dst, payload): (u8, GroupKind, u8, u32, u32, &[u8]) = match frame {
        Frame::Data {
            group,
            op,
            src,
            dst,
            payload,
        } => (0, *group, op_code(*op), *src, *dst, payload),
        Frame::Hangup { group, src, dst } => (1, *group, 0, *src, *dst, &[]),
    };
    let mut buf = Vec::with_capacity(HEADER + payload.len());
    buf.extend_from_slice(&[kind, group.code(), op, 0]);
    buf.extend_from_slice(&src.to_le_bytes());
    buf.extend_from_slice(&dst.to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub(crate) fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut h = [0u8; HEADER];
    match r.read_exact(&mut h[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut h[1..])?;
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let group =
        GroupKind::from_code(h[1]).ok_or_else(|| bad(format!("unknown group code {}", h[1])))?;
    let src = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    let dst = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(h[12..20].try_into().expect("8 bytes"));
    match h[0] {
        0 => {
            let op = *OPS
                .get(h[2] as usize)
                .ok_or_else(|| bad(format!("unknown op code {}", h[2])))?;
            let len = usize::try_from(len).map_err(|_| bad(format!("frame of {len} bytes")))?;
            let mut payload = vec![0u8; len];
            r.read_exact(&mut payload)?;
            Ok(Some(Frame::Data {
                group,
                op,
                src,
                dst,
                payload,
            }))
        }
        1 => Ok(Some(Frame::Hangup { group, src, dst })),
        k => Err(bad(format!("unknown frame kind {k}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &Frame::Data {
                group: GroupKind::Ep,
                op: Op::AllToAll,
                src: 3,
                dst: 1,
                payload: vec![1, 2, 3],
            },
        )
        .unwrap();
        write_frame(
            &mut buf,
            &Frame::Hangup {
                group: GroupKind::Pp,
                src: 0,
                dst: 2,
            },
        )
        .unwrap();
        let mut r = buf.as_slice();
        match read_frame(&mut r).unwrap() {
            Some(Frame::Data {
                group: GroupKind::Ep,
                op: Op::AllToAll,
                src: 3,
                dst: 1,
                payload,
            }) => assert_eq!(payload, vec![1, 2, 3]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_frame(&mut r).unwrap(),
            Some(Frame::Hangup {
                group: GroupKind::Pp,
                src: 0,
                dst: 2
            })
        ));
        assert!(read_frame(&mut r).unwrap().is_none());
    }
}
