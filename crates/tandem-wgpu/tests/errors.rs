//! Bad ops come back as tandem errors before anything is encoded, and the backend stays usable.

use tandem_core::ops::{Add, Attention, Embed, Op};
use tandem_core::{Backend, BackendExt, DType, Error, Step};
use tandem_wgpu::{WgpuBackend, WgpuOptions};

#[test]
fn bad_ops_are_errors_and_the_backend_survives() {
    let mut b = match pollster::block_on(WgpuBackend::new(WgpuOptions::default())) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIP errors: {e}");
            return;
        }
    };
    let table = b.alloc_weight(DType::F32, 4, 3).unwrap();
    b.write(table, bytemuck::cast_slice(&(0..12).map(|i| i as f32).collect::<Vec<_>>())).unwrap();
    let ids = b.alloc(DType::U32, 2).unwrap();
    let out = b.alloc(DType::F32, 6).unwrap();
    let embed = |n| {
        Op::Embed(Embed { table, dtype: DType::F32, ids, out, n, vocab: 4, dim: 3, scale: 1.0 })
    };

    // A token id past the vocabulary, uploaded in the same step.
    let mut step = Step::default();
    step.write_u32(ids, &[1, 4]);
    step.push(embed(2));
    assert!(
        matches!(b.execute(&step), Err(Error::ShapeMismatch { op: "embed", .. })),
        "id >= vocab"
    );

    // An output too small for the op.
    assert!(matches!(
        b.execute(&Step { writes: vec![], read_back: vec![], groups: vec![], ops: vec![embed(3)] }),
        Err(Error::ShapeMismatch { .. })
    ));
    // A wrong dtype.
    let add = Op::Add(Add { x: out, y: ids, len: 2 });
    assert!(matches!(
        b.execute(&Step { writes: vec![], read_back: vec![], groups: vec![], ops: vec![add] }),
        Err(Error::ShapeMismatch { .. })
    ));
    // Reads outside the buffer.
    assert!(pollster::block_on(b.read(out, 20, 8)).is_err());

    // Still usable.
    let mut step = Step::default();
    step.write_u32(ids, &[3, 0]);
    step.push(embed(2));
    b.execute(&step).unwrap();
    let got = pollster::block_on(b.read_f32(out, 0, 6)).unwrap();
    assert_eq!(got, [9.0, 10.0, 11.0, 0.0, 1.0, 2.0]);
    // Unaligned reads come back exact.
    let bytes = pollster::block_on(b.read(out, 5, 6)).unwrap();
    let all: Vec<u8> = bytemuck::cast_slice(&got).to_vec();
    assert_eq!(bytes, all[5..11]);
    let s = b.stats();
    assert!(s.submissions >= 2 && s.readback_bytes >= 30, "{s:?}");
}

#[test]
fn bad_attention_rows_are_errors() {
    let mut b = match pollster::block_on(WgpuBackend::new(WgpuOptions::default())) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIP errors: {e}");
            return;
        }
    };
    // Two blocks of two positions, one kv head of 4 dims; two decode rows.
    let (bs, hd) = (2, 4);
    let cache_k = b.alloc(DType::F32, 2 * bs * hd).unwrap();
    let cache_v = b.alloc(DType::F32, 2 * bs * hd).unwrap();
    let q = b.alloc(DType::F32, 2 * hd).unwrap();
    let out = b.alloc(DType::F32, 2 * hd).unwrap();
    let [positions, table_starts, tables] = [2, 2, 3].map(|n| b.alloc(DType::U32, n).unwrap());
    let op = Op::Attention(Attention {
        q,
        cache_k,
        cache_v,
        kv_dtypes: DType::F32.into(),
        positions,
        table_starts,
        tables,
        tables_len: 3,
        out,
        n: 2,
        decode_rows: 2,
        max_ctx: 4,
        heads: 1,
        kv_heads: 1,
        head_dim: hd,
        block_size: bs,
        scale: 0.5,
        window: 0,
        softcap: 0.0,
    });
    let run = |b: &mut WgpuBackend, pos: [u32; 2], starts: [u32; 2], table: [u32; 3]| {
        let mut step = Step::default();
        step.write_u32(positions, &pos);
        step.write_u32(table_starts, &starts);
        step.write_u32(tables, &table);
        step.push(op.clone());
        b.execute(&step)
    };
    for (what, pos, starts, table) in [
        ("a position past max_ctx", [3, 4], [0, 1], [0, 1, 0]),
        ("a block past the pool", [3, 1], [0, 1], [0, 2, 0]),
        ("a table past tables_len", [1, 3], [0, 2], [0, 1, 0]),
    ] {
        let r = run(&mut b, pos, starts, table);
        assert!(matches!(r, Err(Error::ShapeMismatch { op: "attention", .. })), "{what}: {r:?}");
    }
    // Two sequences sharing block 1 (positions 0..4 and 0..2), then still usable.
    run(&mut b, [3, 1], [0, 2], [1, 0, 1]).unwrap();
}
