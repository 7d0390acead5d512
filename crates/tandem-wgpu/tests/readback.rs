//! Ranges a step names in `Step::read_back` come back without a submission of their own;
//! anything else still reads correctly through its own copy.

use tandem_core::ops::{Add, Op};
use tandem_core::{Backend, BackendExt, DType, Step};
use tandem_wgpu::{WgpuBackend, WgpuOptions};

#[test]
fn staged_reads_cost_no_submission() {
    let mut b = match pollster::block_on(WgpuBackend::new(WgpuOptions::default())) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIP readback: {e}");
            return;
        }
    };
    let x = b.alloc(DType::F32, 6).unwrap();
    let y = b.alloc(DType::F32, 6).unwrap();
    let floats = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
    b.write(x, &floats(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])).unwrap();
    b.write(y, &floats(&[10.0; 6])).unwrap();
    let step = Step {
        writes: vec![],
        groups: vec![],
        ops: vec![Op::Add(Add { x, y, len: 6 })],
        // An unaligned range, one of another buffer, and ones that are invalid (ignored).
        read_back: vec![(x, 5, 9), (y, 0, 24), (x, 20, 8), (tandem_core::BufId(9999), 0, 4)],
    };
    b.execute(&step).unwrap();
    let s0 = b.stats();
    let all: Vec<u8> = floats(&[10.0, 11.0, 12.0, 13.0, 14.0, 15.0]);
    assert_eq!(pollster::block_on(b.read(x, 5, 9)).unwrap(), all[5..14]);
    // A range inside a staged one is staged too.
    assert_eq!(pollster::block_on(b.read_f32(x, 2, 1)).unwrap(), [12.0]);
    assert_eq!(pollster::block_on(b.read_f32(y, 0, 6)).unwrap(), [10.0; 6]);
    assert_eq!(b.stats().submissions, s0.submissions, "staged reads submit nothing");

    // Not staged: its own submission, same data.
    assert_eq!(
        pollster::block_on(b.read_f32(x, 0, 6)).unwrap(),
        [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    );
    assert_eq!(b.stats().submissions, s0.submissions + 1);
    // The invalid hints are still errors when read.
    assert!(pollster::block_on(b.read(x, 20, 8)).is_err());

    // A write after the step makes the staged copy stale: the read sees the write.
    b.write(x, &floats(&[7.0])).unwrap();
    assert_eq!(pollster::block_on(b.read_f32(x, 0, 1)).unwrap(), [7.0]);
    assert_eq!(pollster::block_on(b.read_f32(x, 2, 1)).unwrap(), [12.0]);

    // The next step replaces what was staged.
    b.execute(&Step {
        writes: vec![],
        groups: vec![],
        ops: vec![Op::Add(Add { x, y, len: 6 })],
        read_back: vec![],
    })
    .unwrap();
    let s1 = b.stats();
    assert_eq!(pollster::block_on(b.read_f32(y, 0, 1)).unwrap(), [10.0]);
    assert_eq!(pollster::block_on(b.read_f32(x, 0, 2)).unwrap(), [17.0, 21.0]);
    assert_eq!(b.stats().submissions, s1.submissions + 2);
}
