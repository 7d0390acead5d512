//! Hand-computed checks of the oracle itself, and bad inputs that must come back as errors
//! (from both CPU modes), never panics.

use half::f16;
use tandem_core::ops::*;
use tandem_core::{Backend, BackendExt, BufId, DType, Error, Step};
use tandem_cpu::CpuBackend;

fn f32_buf<B: Backend>(b: &mut B, v: &[f32]) -> BufId {
    let id = b.alloc(DType::F32, v.len()).unwrap();
    b.write(id, bytemuck::cast_slice(v)).unwrap();
    id
}

fn u32_buf<B: Backend>(b: &mut B, v: &[u32]) -> BufId {
    let id = b.alloc(DType::U32, v.len()).unwrap();
    b.write(id, bytemuck::cast_slice(v)).unwrap();
    id
}

fn run<B: Backend>(b: &mut B, op: Op) -> tandem_core::Result<()> {
    b.execute(&Step { writes: vec![], read_back: vec![], groups: vec![], ops: vec![op] })
}

fn read<B: Backend>(b: &mut B, id: BufId, len: usize) -> Vec<f32> {
    pollster::block_on(b.read_f32(id, 0, len)).unwrap()
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "element {i}: got {g}, want {w} (all: {got:?})"
        );
    }
}

#[test]
fn rms_norm_by_hand() {
    let b = &mut CpuBackend::reference();
    let x = f32_buf(b, &[1.0, 2.0, 3.0, 4.0]);
    let w = f32_buf(b, &[1.0, 1.0, 2.0, 0.5]);
    let out = b.alloc(DType::F32, 4).unwrap();
    run(b, Op::RmsNorm(RmsNorm { x, weight: w, out, n: 1, dim: 4, eps: 0.0 })).unwrap();
    // mean(x^2) = 30 / 4 = 7.5
    let r = 7.5f32.sqrt();
    assert_close(&read(b, out, 4), &[1.0 / r, 2.0 / r, 6.0 / r, 2.0 / r]);
}

#[test]
fn matmul_tiny_with_bias() {
    let b = &mut CpuBackend::reference();
    let x = f32_buf(b, &[1.0, 2.0, 3.0, -1.0, 0.0, 1.0]);
    let w = f32_buf(b, &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, -1.0, 2.0, 0.5]);
    let bias = f32_buf(b, &[0.0, 0.0, 0.0, 10.0]);
    let out = b.alloc(DType::F32, 8).unwrap();
    let op = Matmul {
        x,
        w,
        wdtype: DType::F32,
        bias: Some(bias),
        out,
        n: 2,
        k: 3,
        m: 4,
        decode_rows: 0,
    };
    run(b, Op::Matmul(op)).unwrap();
    assert_close(&read(b, out, 8), &[1.0, 2.0, 6.0, 14.5, -1.0, 0.0, 0.0, 11.5]);
}

/// One Q4_1 block built byte by byte: element e has nibble e % 16, d = 0.5, m = -1, so its
/// value is 0.5 * (e % 16) - 1.
fn q4_1_block() -> Vec<u8> {
    let mut bytes = vec![0u8; DType::Q4_1.storage_bytes(32)];
    for (j, byte) in bytes[..16].iter_mut().enumerate() {
        let (lo, hi) = ((2 * j) % 16, (2 * j + 1) % 16);
        *byte = (lo | (hi << 4)) as u8;
    }
    let l = DType::Q4_1.quant_layout(32).unwrap();
    bytes[l.d_offset..l.d_offset + 2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    bytes[l.m_offset..l.m_offset + 2].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
    bytes
}

#[test]
fn q4_1_dequant_by_hand() {
    let want: Vec<f32> = (0..32).map(|e| 0.5 * (e % 16) as f32 - 1.0).collect();
    assert_eq!(tandem_core::quant::decode(&q4_1_block(), DType::Q4_1, 32), want);
    for b in [&mut CpuBackend::reference(), &mut CpuBackend::fast(2).unwrap()] {
        // Through embed: the block as one row of 32.
        let table = b.alloc(DType::Q4_1, 32).unwrap();
        b.write(table, &q4_1_block()).unwrap();
        let ids = u32_buf(b, &[0]);
        let out = b.alloc(DType::F32, 32).unwrap();
        run(
            b,
            Op::Embed(Embed {
                table,
                dtype: DType::Q4_1,
                ids,
                out,
                n: 1,
                vocab: 1,
                dim: 32,
                scale: 1.0,
            }),
        )
        .unwrap();
        assert_eq!(read(b, out, 32), want);
        // Through matmul (n = 1, the fast decode path): sum of the row against ones, and two
        // rows of 16 that split the block (the general path).
        let x = f32_buf(b, &[1.0; 32]);
        let out = b.alloc(DType::F32, 2).unwrap();
        run(
            b,
            Op::Matmul(Matmul {
                x,
                w: table,
                wdtype: DType::Q4_1,
                bias: None,
                out,
                n: 1,
                k: 32,
                m: 1,
                decode_rows: 1,
            }),
        )
        .unwrap();
        assert_close(&read(b, out, 1), &[want.iter().sum()]);
        run(
            b,
            Op::Matmul(Matmul {
                x,
                w: table,
                wdtype: DType::Q4_1,
                bias: None,
                out,
                n: 1,
                k: 16,
                m: 2,
                decode_rows: 1,
            }),
        )
        .unwrap();
        assert_close(&read(b, out, 2), &[want[..16].iter().sum(), want[16..].iter().sum()]);
    }
}

/// cache: two blocks of block_size 2, one kv head, head_dim 2. Block 1 holds the context
/// (keys [1, 0], [0, 1]; values [1, 2], [3, 4]); block 0 is NaN poison.
fn two_position_cache<B: Backend>(b: &mut B) -> (BufId, BufId, BufId) {
    let nan = f32::NAN;
    let ck = f32_buf(b, &[nan, nan, nan, nan, 1.0, 0.0, 0.0, 1.0]);
    let cv = f32_buf(b, &[nan, nan, nan, nan, 1.0, 2.0, 3.0, 4.0]);
    let table = u32_buf(b, &[1]);
    (ck, cv, table)
}

/// Attention of queries at `positions` of one sequence (block table `table`, one block), the
/// first `decode_rows` of them decodes.
#[allow(clippy::too_many_arguments)]
fn attention_op<B: Backend>(
    b: &mut B,
    q: BufId,
    ck: BufId,
    cv: BufId,
    table: BufId,
    out: BufId,
    positions: &[u32],
    decode_rows: usize,
    max_ctx: usize,
) -> Op {
    let n = positions.len();
    let pos = u32_buf(b, positions);
    let starts = u32_buf(b, &vec![0; n]);
    Op::Attention(Attention {
        q,
        cache_k: ck,
        cache_v: cv,
        kv_dtypes: DType::F32.into(),
        positions: pos,
        table_starts: starts,
        tables: table,
        tables_len: 1,
        out,
        n,
        decode_rows,
        max_ctx,
        heads: 1,
        kv_heads: 1,
        head_dim: 2,
        block_size: 2,
        scale: 1.0,
        window: 0,
        softcap: 0.0,
    })
}

#[test]
fn attention_two_positions_by_hand() {
    let b = &mut CpuBackend::reference();
    let (ck, cv, table) = two_position_cache(b);
    // Decode at position 1: scores [ln 3, 0] -> softmax [3/4, 1/4].
    let q = f32_buf(b, &[3f32.ln(), 0.0]);
    let out = b.alloc(DType::F32, 2).unwrap();
    let op = attention_op(b, q, ck, cv, table, out, &[1], 1, 2);
    run(b, op).unwrap();
    assert_close(&read(b, out, 2), &[0.75 * 1.0 + 0.25 * 3.0, 0.75 * 2.0 + 0.25 * 4.0]);
    // Prefill of both: query 0 sees only position 0, so its output is V0 whatever q is.
    let q = f32_buf(b, &[5.0, -7.0, 3f32.ln(), 0.0]);
    let out = b.alloc(DType::F32, 4).unwrap();
    let op = attention_op(b, q, ck, cv, table, out, &[0, 1], 0, 2);
    run(b, op).unwrap();
    assert_close(&read(b, out, 4), &[1.0, 2.0, 1.5, 2.5]);
}

#[test]
fn rope_position_zero_is_identity_and_rotates_by_angle() {
    let b = &mut CpuBackend::reference();
    let vals = [0.3, -1.2, 2.0, 0.7, 1.0, 0.0, 1.0, 0.0];
    let x = f32_buf(b, &vals);
    let pos = u32_buf(b, &[0, 3]);
    let inv = f32_buf(b, &[1.0, 0.5]);
    run(
        b,
        Op::Rope(Rope {
            x,
            positions: pos,
            inv_freq: inv,
            n: 2,
            heads: 1,
            head_dim: 4,
            rot_dim: 4,
            scale: 1.0,
        }),
    )
    .unwrap();
    let got = read(b, x, 8);
    assert_eq!(&got[..4], &vals[..4]);
    // Token 1, position 3: pairs (x0, x2) by angle 3 and (x1, x3) by angle 1.5.
    let (c3, s3, c15, s15) = (3f32.cos(), 3f32.sin(), 1.5f32.cos(), 1.5f32.sin());
    assert_close(&got[4..], &[c3 - s3, 0.0 * c15, s3 + c3, 0.0 * s15]);
}

#[test]
fn argmax_ties_and_nan() {
    let b = &mut CpuBackend::reference();
    let nan = f32::NAN;
    let x =
        f32_buf(b, &[1.0, 3.0, nan, 3.0, 2.0, nan, nan, -1.0, nan, nan, nan, nan, nan, nan, nan]);
    let out = b.alloc(DType::U32, 3).unwrap();
    run(b, Op::Argmax(Argmax { x, out, n: 3, width: 5 })).unwrap();
    assert_eq!(pollster::block_on(b.read_u32(out, 0, 3)).unwrap(), vec![1, 2, 0]);
}

#[test]
fn swiglu_by_formula() {
    let b = &mut CpuBackend::reference();
    let gate = f32_buf(b, &[0.0, 1.0, -2.0]);
    let up = f32_buf(b, &[5.0, 2.0, 3.0]);
    let out = b.alloc(DType::F32, 3).unwrap();
    run(b, Op::Swiglu(Swiglu { gate, up, out, len: 3 })).unwrap();
    let silu = |g: f32| g / (1.0 + (-g).exp());
    assert_close(&read(b, out, 3), &[0.0, silu(1.0) * 2.0, silu(-2.0) * 3.0]);
}

#[test]
fn kv_write_f16_rounds_to_nearest() {
    let b = &mut CpuBackend::reference();
    let k = f32_buf(b, &[1.0 / 3.0, 70000.0]);
    let v = f32_buf(b, &[-0.1, 1.0]);
    let ck = b.alloc(DType::F16, 6).unwrap();
    let cv = b.alloc(DType::F16, 6).unwrap();
    let slots = u32_buf(b, &[2]);
    let op = KvWrite {
        k,
        v,
        cache_k: ck,
        cache_v: cv,
        kv_dtypes: DType::F16.into(),
        slots,
        n: 1,
        kv_heads: 1,
        head_dim: 2,
    };
    run(b, Op::KvWrite(op)).unwrap();
    let got: Vec<f16> =
        bytemuck::pod_collect_to_vec(&pollster::block_on(b.read(ck, 0, 12)).unwrap());
    let z = f16::ZERO;
    assert_eq!(got, vec![z, z, z, z, f16::from_f32(1.0 / 3.0), f16::INFINITY]);
}

/// Each op is broken in one way; both modes must answer Err and stay usable.
#[test]
fn bad_ops_are_errors_not_panics() {
    for b in [&mut CpuBackend::reference(), &mut CpuBackend::fast(2).unwrap()] {
        let x = f32_buf(b, &[1.0; 64]);
        let small = f32_buf(b, &[1.0; 3]);
        let out = b.alloc(DType::F32, 64).unwrap();
        let ids = u32_buf(b, &[0, 5]);
        let u32w = u32_buf(b, &[0; 64]);
        let (ck, cv, table) = two_position_cache(b);
        let bad_table = u32_buf(b, &[2]);
        let slots = u32_buf(b, &[4]);
        let q = f32_buf(b, &[1.0; 4]);
        let mm = |x, w, wdtype, n, k, m| {
            Op::Matmul(Matmul { x, w, wdtype, bias: None, out, n, k, m, decode_rows: 0 })
        };
        let bad = [
            (
                "id >= vocab",
                Op::Embed(Embed {
                    table: x,
                    dtype: DType::F32,
                    ids,
                    out,
                    n: 2,
                    vocab: 5,
                    dim: 4,
                    scale: 1.0,
                }),
            ),
            ("w too small", mm(x, small, DType::F32, 1, 4, 4)),
            ("dtype mismatch", mm(x, x, DType::Q8_0, 1, 8, 8)),
            ("u32 weight", mm(x, u32w, DType::U32, 1, 8, 8)),
            ("shape overflow", mm(x, x, DType::F32, usize::MAX, 2, 1)),
            ("output aliases input", mm(out, x, DType::F32, 1, 8, 8)),
            ("unknown buffer", mm(BufId(9999), x, DType::F32, 1, 8, 8)),
            ("block outside cache", attention_op(b, q, ck, cv, bad_table, out, &[1], 1, 2)),
            ("block table too short", attention_op(b, q, ck, cv, table, out, &[2], 1, 3)),
            ("position past max_ctx", attention_op(b, q, ck, cv, table, out, &[1], 1, 1)),
            ("decode_rows > n", attention_op(b, q, ck, cv, table, out, &[1], 2, 2)),
            (
                "slot outside cache",
                Op::KvWrite(KvWrite {
                    k: q,
                    v: q,
                    cache_k: ck,
                    cache_v: cv,
                    kv_dtypes: DType::F32.into(),
                    slots,
                    n: 1,
                    kv_heads: 1,
                    head_dim: 2,
                }),
            ),
            (
                "quantized kv cache",
                Op::KvWrite(KvWrite {
                    k: q,
                    v: q,
                    cache_k: ck,
                    cache_v: cv,
                    kv_dtypes: DType::Q8_0.into(),
                    slots,
                    n: 1,
                    kv_heads: 1,
                    head_dim: 2,
                }),
            ),
            (
                "odd head_dim",
                Op::Rope(Rope {
                    x,
                    positions: ids,
                    inv_freq: x,
                    n: 1,
                    heads: 1,
                    head_dim: 3,
                    rot_dim: 3,
                    scale: 1.0,
                }),
            ),
            (
                "copy past the end",
                Op::CopyRows(CopyRows {
                    src: small,
                    dst: out,
                    src_row: 1,
                    dst_row: 0,
                    n_rows: 1,
                    width: 3,
                }),
            ),
        ];
        for (what, op) in bad {
            match run(b, op) {
                Err(
                    Error::ShapeMismatch { .. }
                    | Error::InvalidParameter(_)
                    | Error::Backend { .. },
                ) => {}
                other => panic!("{}: {what}: expected an error, got {other:?}", b.name()),
            }
        }
        assert!(!b.supports(&mm(x, u32w, DType::U32, 1, 8, 8)));
        let kvq = |kv_dtype: DType| KvWrite {
            k: q,
            v: q,
            cache_k: ck,
            cache_v: cv,
            kv_dtypes: kv_dtype.into(),
            slots,
            n: 1,
            kv_heads: 1,
            head_dim: 2,
        };
        // q4_1 is a weight type, never a cache type; q4_0 is, but only in whole 32-value rows.
        assert!(!b.supports(&Op::KvWrite(kvq(DType::Q4_1))));
        let e = run(b, Op::KvWrite(kvq(DType::Q4_0))).unwrap_err().to_string();
        assert!(e.contains("whole 32-value blocks"), "{e}");
        assert!(pollster::block_on(b.read(x, 250, 10)).is_err());
        assert!(b.write(small, &[0u8; 16]).is_err());
        // Still usable, with every buffer still there (outputs go back even on error).
        run(b, mm(x, x, DType::F32, 1, 8, 8)).unwrap();
        assert_eq!(read(b, out, 8), vec![8.0; 8]);
    }
}

#[test]
fn allocated_bytes_tracks_alloc_and_free() {
    let mut b = CpuBackend::reference();
    assert_eq!(b.allocated_bytes(), 0);
    let a = b.alloc(DType::Q4_1, 100).unwrap();
    let c = b.alloc(DType::F16, 3).unwrap();
    assert_eq!(b.allocated_bytes(), DType::Q4_1.storage_bytes(100) + 8);
    b.free(a);
    b.free(c);
    assert_eq!(b.allocated_bytes(), 0);
    assert_eq!(b.name(), "cpu-reference");
    assert_eq!(CpuBackend::fast(1).unwrap().name(), "cpu-fast");
}
