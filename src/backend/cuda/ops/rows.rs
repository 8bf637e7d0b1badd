//! Row copies on the GPU (kernels/ops.cu's `copy_rows`): gathers in a permutation's order,
//! column slices and joins, and scatters into a cache's slots.

use super::{empty, f32_ptr, gpu, gpu_mut, raw, rows_of, upload_i32};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `dst[dst_rows[i]][dst_off..][..len] = src[src_rows[i] / div][src_off..][..len]` for `n` rows;
/// the index lists are device addresses of i32s (0: row i). `dst` holds f32, or bf16 when
/// `dst_bf16` (a KV cache; the values are rounded to nearest even).
#[allow(clippy::too_many_arguments)]
fn copy_rows(
    src: &Tensor,
    src_w: usize,
    src_off: usize,
    src_rows: u64,
    div: usize,
    (dst, dst_bf16): (u64, bool),
    dst_w: usize,
    dst_off: usize,
    dst_rows: u64,
    len: usize,
    n: usize,
) -> Result<()> {
    let dev = gpu(src)?.device().clone();
    if n == 0 || len == 0 {
        return Ok(());
    }
    let sp = f32_ptr(src)?;
    let (sw, so, dv, dw, dof, l) = (
        src_w as i32,
        src_off as i32,
        div.max(1) as i32,
        dst_w as i32,
        dst_off as i32,
        len as i32,
    );
    // 256 threads of COPY_V = 4 elements a block (kernels/ops.cu).
    let per_row = len.div_ceil(1024);
    let pr = per_row as i32;
    let name = if dst_bf16 {
        "copy_rows_to_bf16"
    } else {
        "copy_rows"
    };
    launch!(dev, dyn name, n * per_row, 256, 0; a = sp, b = sw, c = so, d = src_rows, e = dv, f2 = dst, g = dw, h = dof, i = dst_rows, j = l, k = pr);
    Ok(())
}

/// Rows of `x` in `order`, pair p reading row p / top_k.
pub fn gather_rows(x: &Tensor, order: &[u32], top_k: usize) -> Result<Tensor> {
    let (rows, h) = rows_of(x);
    if let Some(&bad) = order.iter().find(|&&p| p as usize / top_k.max(1) >= rows) {
        return Err(Error::Shape(format!(
            "gather_rows: pair {bad} of {rows} rows x {top_k}"
        )));
    }
    let dev = gpu(x)?.device().clone();
    let out = empty(&dev, [order.len(), h])?;
    let idx: Vec<i32> = order.iter().map(|&p| p as i32).collect();
    let ib = upload_i32(&dev, &idx)?;
    let (ip, op) = (raw(&dev, &ib), gpu(&out)?.ptr());
    copy_rows(x, h, 0, ip, top_k, (op, false), h, 0, 0, h, order.len())?;
    drop(ib);
    Ok(out)
}

/// Columns `start..start + len` of the rows of `x`.
pub fn narrow_cols(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    let (rows, cols) = crate::ops::col_range(x, start, len)?;
    let dev = gpu(x)?.device().clone();
    let out = empty(&dev, [rows, len])?;
    copy_rows(
        x,
        cols,
        start,
        0,
        1,
        (gpu(&out)?.ptr(), false),
        len,
        0,
        0,
        len,
        rows,
    )?;
    Ok(out)
}

/// The rows of `parts` side by side.
pub fn concat_cols(parts: &[&Tensor]) -> Result<Tensor> {
    let dev = gpu(parts[0])?.device().clone();
    let rows = rows_of(parts[0]).0;
    let width: usize = parts.iter().map(|p| rows_of(p).1).sum();
    let out = empty(&dev, [rows, width])?;
    let op = gpu(&out)?.ptr();
    let mut off = 0;
    for p in parts {
        let (r, c) = rows_of(p);
        if r != rows {
            return Err(Error::Shape(format!(
                "concat_cols: {} rows against {rows}",
                r
            )));
        }
        copy_rows(p, c, 0, 0, 1, (op, false), width, off, 0, c, rows)?;
        off += c;
    }
    Ok(out)
}

/// Writes row i of `src` into row `slots[i]` of `dst` (rows of `dst_w`), at column `col`.
pub fn scatter_rows(
    dst: &mut Tensor,
    dst_w: usize,
    col: usize,
    slots: &[usize],
    src: &Tensor,
) -> Result<()> {
    let dev = gpu(src)?.device().clone();
    let idx: Vec<i32> = slots.iter().map(|&s| s as i32).collect();
    let ib = upload_i32(&dev, &idx)?;
    let end = slots.iter().map(|&s| s + 1).max().unwrap_or(0);
    scatter_rows_at(dst, dst_w, col, raw(&dev, &ib), slots.len(), end, src)
}

/// [`scatter_rows`] with the `n` slots already on the device at `slots`, all below `slot_end`.
pub(crate) fn scatter_rows_at(
    dst: &mut Tensor,
    dst_w: usize,
    col: usize,
    slots: u64,
    n: usize,
    slot_end: usize,
    src: &Tensor,
) -> Result<()> {
    let (rows, w) = rows_of(src);
    if rows != n || col + w > dst_w || slot_end > dst.numel() / dst_w.max(1) {
        return Err(Error::Shape(format!(
            "scatter_rows: {} into rows of {dst_w} at column {col}",
            src.shape()
        )));
    }
    let d = gpu_mut(dst)?;
    let dp = (d.ptr(), d.is_bf16());
    copy_rows(src, w, 0, 0, 1, dp, dst_w, col, slots, w, rows)
}
