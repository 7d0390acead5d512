//! The GGUF push loader fed in chunks of every size, against the whole-file loader: a stream
//! that finishes must have handed over every tensor, equal bit for bit to what the whole-file
//! loader gives; a file the whole-file loader reads whole, the stream reads too (unless its
//! tensors overlap, which only a stream refuses).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_core::loader::gguf::GgufFile;
use tandem_core::loader::stream::GgufStream;
use tandem_core::loader::TensorStore;
use tandem_fuzz::{check_tensor, same_tensor, Keep, Streamed};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Streamed::parse(data) else { return };
    let mut stream = GgufStream::new("f.gguf", input.known_len());
    let mut sink = Keep::new(input.load_as);
    let mut result = Ok(());
    for chunk in input.chunks() {
        result = stream.push(chunk, &mut sink);
        if result.is_err() {
            break;
        }
    }
    let result = result.and_then(|()| stream.finish());
    assert!(sink.began <= 1);

    let whole = GgufFile::from_bytes("f.gguf", input.file.to_vec());
    let loaded = whole.as_ref().ok().map(|f| {
        f.infos()
            .iter()
            .map(|i| (i.name.clone(), f.load(&i.name, input.load_as)))
            .collect::<Vec<_>>()
    });
    match &result {
        Ok(()) => {
            let loaded = loaded.unwrap_or_else(|| {
                panic!("the stream read a file the whole-file loader refuses: {:?}", whole.err())
            });
            assert_eq!(sink.tensors.len(), loaded.len());
            let mut by_offset: Vec<_> = sink.tensors.iter().collect();
            by_offset.sort_by(|a, b| a.0.cmp(&b.0));
            let mut expected: Vec<_> = loaded.iter().collect();
            expected.sort_by(|a, b| a.0.cmp(&b.0));
            for ((name, got), (want_name, want)) in by_offset.into_iter().zip(expected) {
                assert_eq!(name, want_name);
                check_tensor(name, got);
                let want = want
                    .as_ref()
                    .unwrap_or_else(|e| panic!("streamed '{name}', the whole-file loader: {e}"));
                assert!(
                    same_tensor(got, want),
                    "'{name}' differs between the stream and the whole file"
                );
            }
        }
        Err(e) => {
            if let Some(loaded) = &loaded {
                if loaded.iter().all(|(_, t)| t.is_ok()) && input.known_len().is_some() {
                    let e = e.to_string();
                    assert!(
                        e.contains("overlap"),
                        "the whole-file loader reads every tensor, the stream fails: {e}"
                    );
                }
            }
        }
    }
});
