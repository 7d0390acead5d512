//! A safetensors shard in memory (the memory-mapped store's own code on owned bytes), every
//! tensor under every conversion.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_core::loader::safetensors::SafetensorsStore;
use tandem_core::loader::TensorStore;
use tandem_fuzz::{check_tensor, load_as};

fuzz_target!(|data: &[u8]| {
    let Ok(store) = SafetensorsStore::from_bytes("f.safetensors", data.to_vec()) else { return };
    for info in store.infos().to_vec() {
        for b in 0..8 {
            if let Ok(t) = store.load(&info.name, load_as(b)) {
                check_tensor(&info.name, &t);
                assert_eq!(t.shape, info.shape);
            }
        }
    }
});
