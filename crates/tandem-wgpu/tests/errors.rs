//! Bad ops come back as tandem errors before anything is encoded, and the backend stays usable.

use tandem_core::ops::{Add, Embed, Op};
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
    b.write(
        table,
        bytemuck::cast_slice(&(0..12).map(|i| i as f32).collect::<Vec<_>>()),
    )
    .unwrap();
    let ids = b.alloc(DType::U32, 2).unwrap();
    let out = b.alloc(DType::F32, 6).unwrap();
    let embed = |n| {
        Op::Embed(Embed {
            table,
            dtype: DType::F32,
            ids,
            out,
            n,
            vocab: 4,
            dim: 3,
        })
    };

    // A token id past the vocabulary, uploaded in the same step.
    let mut step = Step::default();
    step.write_u32(ids, &[1, 4]);
    step.push(embed(2));
    assert!(
        matches!(
            b.execute(&step),
            Err(Error::ShapeMismatch { op: "embed", .. })
        ),
        "id >= vocab"
    );

    // An output too small for the op.
    assert!(matches!(
        b.execute(&Step {
            writes: vec![],
            read_back: vec![],
            ops: vec![embed(3)]
        }),
        Err(Error::ShapeMismatch { .. })
    ));
    // A wrong dtype.
    let add = Op::Add(Add {
        x: out,
        y: ids,
        len: 2,
    });
    assert!(matches!(
        b.execute(&Step {
            writes: vec![],
            read_back: vec![],
            ops: vec![add]
        }),
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
