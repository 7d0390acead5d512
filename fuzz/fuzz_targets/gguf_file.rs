//! A whole GGUF file in memory (the same parser as the memory-mapped one): header, config, and
//! every tensor under every conversion. Whatever loads must have the bytes its type and shape
//! take.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_core::loader::gguf::GgufFile;
use tandem_core::loader::TensorStore;
use tandem_fuzz::{check_tensor, load_as};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes("f.gguf", data.to_vec()) else { return };
    let _ = file.header_config();
    if let Ok(cfg) = file.model_config() {
        assert!(cfg.validate().is_ok());
        assert!(cfg.rope_inv_freq().iter().all(|f| f.is_finite()), "{cfg:?}");
    }
    for info in file.infos().to_vec() {
        for b in 0..8 {
            if let Ok(t) = file.load(&info.name, load_as(b)) {
                check_tensor(&info.name, &t);
                assert_eq!(t.shape, info.shape);
            }
        }
    }
});
