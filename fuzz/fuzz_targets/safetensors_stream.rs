//! The safetensors push loader fed in chunks of every size, against the in-memory store: a
//! stream that finishes has handed over every tensor, equal bit for bit to the store's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_core::loader::safetensors::SafetensorsStore;
use tandem_core::loader::stream::SafetensorsStream;
use tandem_core::loader::TensorStore;
use tandem_fuzz::{check_tensor, same_tensor, Keep, Streamed};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Streamed::parse(data) else { return };
    let mut stream = SafetensorsStream::new("f.safetensors", input.known_len());
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

    let store = SafetensorsStore::from_bytes("f.safetensors", input.file.to_vec());
    match &result {
        Ok(()) => {
            let store =
                store.unwrap_or_else(|e| panic!("the stream read a file the store refuses: {e}"));
            assert_eq!(sink.tensors.len(), store.infos().len());
            for (name, got) in &sink.tensors {
                check_tensor(name, got);
                let want = store
                    .load(name, input.load_as)
                    .unwrap_or_else(|e| panic!("streamed '{name}', the store: {e}"));
                assert!(
                    same_tensor(got, &want),
                    "'{name}' differs between the stream and the store"
                );
            }
        }
        Err(e) => {
            if let Ok(store) = &store {
                let all = store.infos().iter().all(|i| store.load(&i.name, input.load_as).is_ok());
                if all && input.known_len().is_some() {
                    panic!("the store reads every tensor, the stream fails: {e}");
                }
            }
        }
    }
});
