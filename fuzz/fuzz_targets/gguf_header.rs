//! The GGUF header scan (`loader::gguf_scan`, how a stream finds where the header ends) against
//! the header parser: bytes arriving in any chunks give the scan the same answer as all at once,
//! and the header the scan delimits parses exactly as the parser reads it from the whole file.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use tandem_core::loader::gguf::GgufFile;
use tandem_core::loader::gguf_scan::HeaderScan;
use tandem_fuzz::Streamed;

/// The scan over `pieces` arriving one after another: the header's length once found.
fn scan(pieces: &[&[u8]], file_len: Option<u64>, limit: usize) -> Result<Option<usize>, String> {
    let mut scan = HeaderScan::new(file_len, limit);
    let mut buf = Vec::new();
    // An empty file is one empty piece: the scan still looks at it.
    for p in pieces.iter().copied().chain(pieces.is_empty().then_some(&[][..])) {
        buf.extend_from_slice(p);
        if let Some(len) = scan.advance(&buf, Path::new("f")).map_err(|e| e.to_string())? {
            return Ok(Some(len));
        }
    }
    Ok(None)
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Streamed::parse(data) else { return };
    let file = input.file;
    let file_len = input.known_len();
    // Small limits too, so the refusal past the limit is reached.
    let limit = if input.seed & 1 == 0 {
        usize::MAX
    } else {
        (input.seed >> 1) as usize % (file.len() + 64)
    };
    let whole = scan(&[file], file_len, limit);
    let chunked = scan(&input.chunks(), file_len, limit);
    assert_eq!(whole.is_ok(), chunked.is_ok(), "whole {whole:?} vs chunked {chunked:?}");
    if let (Ok(a), Ok(b)) = (&whole, &chunked) {
        assert_eq!(a, b);
    }

    let parsed = GgufFile::parse_header(PathBuf::from("f"), file, None);
    match whole {
        Ok(Some(len)) => {
            assert!(len <= file.len() && len <= limit);
            // The parser never reads past where the scan says the header ends.
            let cut = GgufFile::parse_header(PathBuf::from("f"), &file[..len], None);
            match (&parsed, &cut) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.tensors.len(), b.tensors.len());
                    // Compared as printed: a NaN value is equal to itself here, not under `==`
                    // (Debug prints floats so that they read back exactly).
                    assert_eq!(format!("{:?}", a.metadata), format!("{:?}", b.metadata));
                    assert_eq!(a.data_offset, b.data_offset);
                    assert!(a.data_offset >= len);
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                _ => panic!(
                    "whole file {:?} but its scanned header ({len} bytes) {:?}",
                    parsed.as_ref().err(),
                    cut.as_ref().err()
                ),
            }
        }
        // Needs more bytes than the file has: the parser must not find a header either.
        Ok(None) => assert!(
            parsed.is_err(),
            "the scan wants more than {} bytes, the parser read a header",
            file.len()
        ),
        Err(_) => {}
    }
    if let Ok(f) = &parsed {
        // A header the parser reads whole is one the scan finds (within the limit).
        if limit == usize::MAX {
            let len =
                whole.expect("the scan accepts what the parser reads").expect("and finds its end");
            assert!(f.data_offset >= len);
        }
    }
});
