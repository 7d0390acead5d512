//! The engine checks every op's operands before a backend runs anything: a bad operand (wrong
//! dtype, too small, not allocated, a written buffer that is also an input) and a bad shape
//! come back as tandem errors from `execute`, and the backend's `run` never sees the step.

mod common {
    pub mod fake;
}

use common::fake::Fake;

use tandem_core::ops::{Add, Attention, Embed, KvWrite, Matmul, Op, RmsNorm, Rope};
use tandem_core::{Backend, BufId, DType, Error, KvDtypes, Result, Step};

fn execute(b: &mut Fake, op: Op) -> Result<()> {
    b.execute(&Step { ops: vec![op], ..Default::default() })
}

/// The error's text, for checking that it names what is wrong.
fn refused(b: &mut Fake, op: Op) -> String {
    let runs = b.steps.len();
    let e = execute(b, op.clone()).expect_err(&format!("{op:?} should be refused"));
    assert_eq!(b.steps.len(), runs, "the backend ran a refused op: {op:?}");
    e.to_string()
}

#[test]
fn bad_operands_are_refused_before_the_backend_runs() {
    let mut b = Fake::without_matmul(DType::BF16);
    let x = b.alloc(DType::F32, 2 * 8).unwrap();
    let small = b.alloc(DType::F32, 8).unwrap();
    let ids = b.alloc(DType::U32, 2).unwrap();
    let w = b.alloc(DType::Q8_0, 4 * 8).unwrap();
    let wf = b.alloc(DType::F32, 4 * 8).unwrap();
    let out = b.alloc(DType::F32, 2 * 4).unwrap();
    let mm = |x, w, wdtype, n| {
        Op::Matmul(Matmul { x, w, wdtype, bias: None, out, n, k: 8, m: 4, decode_rows: n })
    };

    // Good ops reach the backend.
    execute(&mut b, mm(x, w, DType::Q8_0, 2)).unwrap();
    execute(&mut b, mm(x, wf, DType::F32, 2)).unwrap();
    assert_eq!(b.steps.len(), 2);

    // A weight of another dtype than the op says.
    let e = refused(&mut b, mm(x, wf, DType::Q8_0, 2));
    assert!(e.contains("matmul") && e.contains("w of dtype q8_0") && e.contains("f32"), "{e}");
    // An input too small for n rows.
    let e = refused(&mut b, mm(small, w, DType::Q8_0, 2));
    assert!(e.contains("x of at least 16 elements") && e.contains("8 elements"), "{e}");
    // An output too small.
    let e = refused(
        &mut b,
        Op::RmsNorm(RmsNorm { x, weight: small, out: small, n: 2, dim: 8, eps: 1e-5 }),
    );
    assert!(e.contains("rms_norm") && e.contains("out of at least 16"), "{e}");
    // ids of f32.
    let embed = Op::Embed(Embed {
        table: wf,
        dtype: DType::F32,
        ids: x,
        out,
        n: 2,
        vocab: 4,
        dim: 4,
        scale: 1.0,
    });
    let e = refused(&mut b, embed);
    assert!(e.contains("embed") && e.contains("ids of dtype u32"), "{e}");
    // A buffer that is not allocated.
    let e = refused(&mut b, mm(BufId(99), w, DType::Q8_0, 1));
    assert!(e.contains("x is buffer 99, which is not allocated"), "{e}");
    // An output that is also an input; an in-place add of a buffer to itself.
    let e = refused(&mut b, mm(out, wf, DType::F32, 1));
    assert!(e.contains("out is buffer") && e.contains("also its x"), "{e}");
    let e = refused(&mut b, Op::Add(Add { x, y: x, len: 4 }));
    assert!(e.contains("add: y is buffer") && e.contains("also its x"), "{e}");
    // Two caches in one buffer.
    let kv = Op::KvWrite(KvWrite {
        k: x,
        v: x,
        cache_k: small,
        cache_v: small,
        kv_dtypes: DType::F32.into(),
        slots: ids,
        n: 2,
        kv_heads: 1,
        head_dim: 4,
    });
    let e = refused(&mut b, kv);
    assert!(e.contains("cache_v is buffer") && e.contains("also its cache_k"), "{e}");
    // Overflowing shapes are errors, not panics.
    assert!(matches!(
        execute(
            &mut b,
            Op::RmsNorm(RmsNorm { x, weight: small, out, n: usize::MAX, dim: 2, eps: 0.0 })
        ),
        Err(Error::ShapeMismatch { op: "rms_norm", .. })
    ));
    assert_eq!(b.steps.len(), 2);
}

#[test]
fn bad_shapes_are_refused_and_support_is_the_backends() {
    let mut b = Fake::without_matmul(DType::BF16);
    let q = b.alloc(DType::F32, 64).unwrap();
    let out = b.alloc(DType::F32, 64).unwrap();
    let cache = b.alloc(DType::F32, 64).unwrap();
    let cache_v = b.alloc(DType::F32, 64).unwrap();
    let u = b.alloc(DType::U32, 8).unwrap();
    let inv = b.alloc(DType::F32, 4).unwrap();
    let att = Attention {
        q,
        cache_k: cache,
        cache_v,
        kv_dtypes: DType::F32.into(),
        positions: u,
        table_starts: u,
        tables: u,
        tables_len: 2,
        out,
        n: 2,
        decode_rows: 2,
        max_ctx: 8,
        heads: 2,
        kv_heads: 1,
        head_dim: 4,
        block_size: 4,
        scale: 0.5,
        window: 0,
        softcap: 0.0,
    };
    execute(&mut b, Op::Attention(att.clone())).unwrap();
    for (what, bad) in [
        ("a q8_0 cache", Attention { kv_dtypes: DType::Q8_0.into(), ..att.clone() }),
        (
            "values finer than keys",
            Attention { kv_dtypes: KvDtypes { k: DType::F16, v: DType::F32 }, ..att.clone() },
        ),
        ("3 heads over 2 kv heads", Attention { heads: 3, kv_heads: 2, ..att.clone() }),
        ("no kv heads", Attention { kv_heads: 0, ..att.clone() }),
        ("empty blocks", Attention { block_size: 0, ..att.clone() }),
        ("more decode rows than rows", Attention { decode_rows: 3, ..att.clone() }),
        ("no context", Attention { max_ctx: 0, ..att.clone() }),
    ] {
        let r = execute(&mut b, Op::Attention(bad));
        assert!(matches!(r, Err(Error::ShapeMismatch { op: "attention", .. })), "{what}: {r:?}");
    }
    let rope = Op::Rope(Rope {
        x: q,
        positions: u,
        inv_freq: inv,
        n: 2,
        heads: 2,
        head_dim: 3,
        rot_dim: 3,
        scale: 1.0,
    });
    assert!(matches!(execute(&mut b, rope), Err(Error::ShapeMismatch { op: "rope", .. })));
    assert_eq!(b.steps.len(), 1);

    // Well-formed, but this backend has no kernel for it.
    let w = b.alloc(DType::BF16, 64).unwrap();
    let mm =
        Matmul { x: q, w, wdtype: DType::BF16, bias: None, out, n: 1, k: 8, m: 8, decode_rows: 1 };
    let r = execute(&mut b, Op::Matmul(mm));
    assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
    assert_eq!(b.steps.len(), 1);
}
