//! Element types a communicator moves, encoded as little-endian bytes on the wire.

/// A plain value a communicator can copy between ranks as bytes.
pub trait Element: Copy + Send + 'static {
    /// Bytes per element on the wire.
    const BYTES: usize;
    /// Appends the little-endian bytes of `self`.
    fn put(self, out: &mut Vec<u8>);
    /// Reads one element from exactly [`Element::BYTES`] bytes.
    fn get(bytes: &[u8]) -> Self;
}

impl Element for f32 {
    const BYTES: usize = 4;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

impl Element for u32 {
    const BYTES: usize = 4;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

/// The bytes of `data`, in order.
pub(crate) fn encode<T: Element>(data: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * T::BYTES);
    for &x in data {
        x.put(&mut out);
    }
    out
}

/// The elements in `bytes`; `None` if the length is not a whole number of elements.
pub(crate) fn decode<T: Element>(bytes: &[u8]) -> Option<Vec<T>> {
    if !bytes.len().is_multiple_of(T::BYTES) {
        return None;
    }
    Some(bytes.chunks_exact(T::BYTES).map(T::get).collect())
}
