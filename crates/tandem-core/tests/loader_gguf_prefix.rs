//! A GGUF file's config read from its first bytes (what a browser plans memory with before the
//! weights download) must equal the whole file's, ask for more while the header is cut, and
//! refuse what is not a GGUF header, without panicking.
use tandem_core::loader::gguf::GgufFile;
use tandem_core::loader::gguf_scan::{config_from_prefix, PrefixConfig};

const LIMIT: usize = 64 << 20;

#[test]
fn smollm2_prefix_gives_the_whole_files_config() {
    let Some(path) = tandem_testkit::default_model(tandem_tools::default_model::path().ok()) else {
        return;
    };
    let file = GgufFile::open(&path).expect("open");
    let want = file.model_config().expect("config");
    let bytes = std::fs::read(&path).expect("read");
    let len = Some(bytes.len() as u64);
    // Growing the prefix to what each answer asks for reaches the config, past the directory.
    let mut n = 1usize;
    let mut asks = 0;
    let got = loop {
        match config_from_prefix("smollm2.gguf", &bytes[..n], len, LIMIT).expect("prefix") {
            PrefixConfig::Config(cfg) => break cfg,
            PrefixConfig::Need(need) => {
                assert!(need > n as u64, "asked for {need} bytes with {n} in hand");
                n = (need as usize).max(n * 2).min(bytes.len());
                asks += 1;
            }
        }
    };
    assert_eq!(*got, want);
    assert!(n < file.data_offset * 2 + 64, "read {n} bytes for a {}-byte header", file.data_offset);
    assert!(asks > 3, "{asks} rounds");
    // Exactly the header is enough; one byte less is not.
    match config_from_prefix("smollm2.gguf", &bytes[..file.data_offset], len, LIMIT) {
        Ok(PrefixConfig::Config(cfg)) => assert_eq!(*cfg, want),
        other => panic!("the header's bytes gave {other:?}"),
    }
    for cut in [0, 3, 8, 23, 24, 1000, file.data_offset / 2] {
        match config_from_prefix("smollm2.gguf", &bytes[..cut], len, LIMIT) {
            Ok(PrefixConfig::Need(need)) => assert!(need > cut as u64, "cut {cut}: need {need}"),
            other => panic!("cut at {cut} gave {other:?}"),
        }
    }
    // A header larger than the limit, or than the file, is refused with the reason.
    let err = config_from_prefix("smollm2.gguf", &bytes[..4096], len, 4096).unwrap_err();
    assert!(err.to_string().contains("more than the 4096 bytes"), "{err}");
    let err = config_from_prefix("smollm2.gguf", &bytes[..4096], Some(4096), LIMIT).unwrap_err();
    assert!(err.to_string().contains("truncated or corrupt"), "{err}");
}

#[test]
fn garbage_prefixes_are_errors_not_panics() {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..2000 {
        let len = (next() % 200) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Half of them pass the magic and version, so the counts and entries are what is hostile.
        if i % 2 == 0 && len >= 8 {
            bytes[..4].copy_from_slice(b"GGUF");
            bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
        }
        match config_from_prefix("garbage.gguf", &bytes, None, 1 << 16) {
            Ok(PrefixConfig::Need(need)) => assert!(need > len as u64),
            Ok(PrefixConfig::Config(_)) | Err(_) => {}
        }
    }
    let err = config_from_prefix("x.gguf", b"PK\x03\x04not a gguf", None, LIMIT).unwrap_err();
    assert!(err.to_string().contains("not a GGUF file"), "{err}");
    let mut huge = b"GGUF".to_vec();
    huge.extend(3u32.to_le_bytes());
    huge.extend(u64::MAX.to_le_bytes());
    huge.extend(1u64.to_le_bytes());
    let err = config_from_prefix("x.gguf", &huge, None, LIMIT).unwrap_err();
    assert!(err.to_string().contains("more than any model has"), "{err}");
}
