//! The streaming detokenizer and stop strings over random token ids (out-of-vocabulary ones
//! included) with both built-in tokenizers: the streamed text is the whole decode, and the
//! stop strings cut it at a stop string and nowhere else.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tandem_core::generate::GenerateParams;
use tandem_core::tokenizer::{Detokenizer, StopStrings};
use tandem_fuzz::tokenizers;

#[derive(Arbitrary, Debug)]
struct Input {
    spm: bool,
    ids: Vec<u16>,
    /// (position, id): ids from anywhere in u32, spliced in.
    wild: Vec<(u8, u32)>,
    stops: Vec<String>,
}

fuzz_target!(|input: Input| {
    let tok = &tokenizers()[input.spm as usize];
    let vocab = tok.vocab_size() as u32;
    let mut ids: Vec<u32> = input.ids.iter().map(|&i| i as u32 % (vocab + 8)).collect();
    for &(at, id) in &input.wild {
        ids.insert((at as usize).min(ids.len()), id);
    }
    let stops_ok =
        GenerateParams { stop: input.stops.clone(), ..Default::default() }.validate().is_ok();
    let mut detok = Detokenizer::default();
    let mut stops = stops_ok.then(|| StopStrings::new(input.stops.clone()));
    let mut text = String::new();
    let mut kept = String::new();
    let mut stopped = false;
    let mut feed = |piece: &str, text: &mut String| {
        text.push_str(piece);
        if let Some(s) = stops.as_mut() {
            let (out, stop) = s.push(piece);
            assert!(!stopped || (out.is_empty() && stop), "text after a stop");
            kept.push_str(&out);
            stopped |= stop;
        }
    };
    for &id in &ids {
        let piece = detok.push(tok, id).expect("decoding never fails");
        feed(&piece, &mut text);
    }
    let tail = detok.finish(tok).expect("decoding never fails");
    feed(&tail, &mut text);
    let whole = tok.decode(&ids, true).expect("decoding never fails");
    // Invalid UTF-8 from byte tokens decodes differently by the run it falls in (SentencePiece's
    // byte fallback turns a whole run with an invalid byte into U+FFFD, a valid character
    // before it included), so only text without replacement characters must match exactly.
    if !whole.contains('\u{FFFD}') {
        assert_eq!(text, whole, "streamed vs whole decode of {ids:?}");
    }

    let Some(mut s) = stops else { return };
    let live: Vec<&String> = input.stops.iter().filter(|s| !s.is_empty()).collect();
    if stopped {
        assert!(text.starts_with(&kept), "kept text is not a prefix");
        let rest = &text[kept.len()..];
        assert!(
            live.iter().any(|s| rest.starts_with(s.as_str())),
            "cut where no stop string starts: {rest:?}"
        );
    } else {
        kept.push_str(&s.finish());
        assert_eq!(kept, text);
    }
    assert!(
        live.iter().all(|s| !kept.contains(s.as_str())),
        "a stop string in the output {kept:?}"
    );
});
