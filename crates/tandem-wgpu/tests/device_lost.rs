//! A destroyed device (as a driver reset leaves it) makes every later call an error that says
//! the device was lost: nothing panics and no read waits forever.

use tandem_core::ops::{Add, Op};
use tandem_core::{Backend, BackendExt, DType, Error, Step};
use tandem_wgpu::{WgpuBackend, WgpuOptions};

#[test]
fn a_lost_device_is_an_error_not_a_hang() {
    let mut b = match pollster::block_on(WgpuBackend::new(WgpuOptions::default())) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIP device_lost: {e}");
            return;
        }
    };
    let x = b.alloc(DType::F32, 4).unwrap();
    let y = b.alloc(DType::F32, 4).unwrap();
    b.write(x, bytemuck::cast_slice(&[1.0f32, 2.0, 3.0, 4.0])).unwrap();
    b.write(y, bytemuck::cast_slice(&[1.0f32; 4])).unwrap();
    let add = || Step {
        writes: vec![],
        read_back: vec![],
        groups: vec![],
        ops: vec![Op::Add(Add { x, y, len: 4 })],
    };
    b.execute(&add()).unwrap();
    assert_eq!(pollster::block_on(b.read_f32(x, 0, 4)).unwrap(), [2.0, 3.0, 4.0, 5.0]);

    let watch = b.watch();
    assert_eq!(watch.reason(), None);
    watch.destroy_for_testing();
    // The step may still be accepted (the loss is reported asynchronously); its read is not.
    let step = b.execute(&add());
    let read = pollster::block_on(b.read_f32(x, 0, 4));
    assert!(read.is_err(), "a read after the loss: {read:?} (step: {step:?})");
    let reason = watch.reason().expect("the loss is recorded once a read has failed");
    assert!(reason.starts_with("destroyed"), "{reason}");
    assert_eq!(pollster::block_on(watch.lost()), reason);
    // From then on every call says so.
    assert!(matches!(b.execute(&add()), Err(Error::DeviceLost { .. })));
    assert!(matches!(b.alloc(DType::F32, 4), Err(Error::DeviceLost { .. })));
    let e = pollster::block_on(b.read_f32(x, 0, 4)).unwrap_err();
    assert!(e.to_string().contains("the GPU device was lost (destroyed"), "{e}");
}
