//! The check that a cut text kept every token, on the real default model's tokenizer
//! (scripts/fetch-model.sh builds it) and on the sentencepiece Unigram and byte-level BPE
//! tokenizers of the test fixtures: where it says so, a pair with the cut text is the pair
//! with the whole text.

use std::path::PathBuf;

use crossenc_model::{ModelFolder, PairTokenizer};
use proptest::prelude::*;

fn tokenizer(max_length: usize) -> PairTokenizer {
    tokenizer_of("models/default", max_length)
}

/// The tokenizer of the folder `dir` (relative to the workspace).
fn tokenizer_of(dir: &str, max_length: usize) -> PairTokenizer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(dir);
    let folder = ModelFolder::open(&dir).expect("models/default: run scripts/fetch-model.sh");
    PairTokenizer::load(&folder, max_length).unwrap()
}

/// The longest prefix of `text` of at most `bytes` bytes.
fn prefix_of(text: &str, bytes: usize) -> &str {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Tokens before the cut, when the cut `prefix` keeps every token.
fn kept(tokenizer: &PairTokenizer, prefix: &str) -> Option<usize> {
    let kept = tokenizer.tokens_before_the_cut(&tokenizer.encode_text(prefix).unwrap());
    tokenizer.prefix_keeps_every_token(kept).then_some(kept)
}

fn keeps_every_token(tokenizer: &PairTokenizer, prefix: &str) -> bool {
    kept(tokenizer, prefix).is_some()
}

#[test]
fn text_of_many_words_cut_anywhere_keeps_every_token_and_spaces_do_not() {
    let tokenizer = tokenizer(512);
    let words = "word ".repeat(4000);
    assert!(keeps_every_token(&tokenizer, &words[..16384]));
    assert!(keeps_every_token(&tokenizer, &words[..2000]) == (2000 / 5 > 512));
    let spaces = " ".repeat(20_000) + "hello";
    assert!(!keeps_every_token(&tokenizer, &spaces[..16384]));
    // One endless word: the cut falls in it, so nothing before it counts.
    assert!(!keeps_every_token(&tokenizer, &"a".repeat(16384)));
}

#[test]
fn the_word_a_cut_falls_in_does_not_count() {
    // Ten one-token words, then a word cut in the middle: its pieces could change, so
    // with max_length 12 the cut is not lossless, however many pieces the cut word has.
    let tokenizer = tokenizer(12);
    let text = "a b c d e f g h i j unbelievably";
    let prefix = &text[..text.len() - 4];
    let encoded = tokenizer.encode_text(prefix).unwrap();
    assert!(encoded.len() >= 12, "the cut word has several pieces");
    assert_eq!(tokenizer.tokens_before_the_cut(&encoded), 10);
    assert!(!keeps_every_token(&tokenizer, prefix));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Where the checks say a cut kept every token and decides the pair's split as the
    /// whole text would, the pair made with the cut text is the pair made with the whole
    /// text, as query or as document, whatever the cut fell in.
    #[test]
    fn a_cut_said_to_keep_every_token_changes_no_pair(
        words in prop::collection::vec("[a-z]{1,12}|[,.!?]|é+|日本", 30..200),
        cut in 0usize..2000,
        max_length in 8usize..64,
        dir in prop::sample::select(vec![
            "models/default",
            "tests/fixtures/models/xlm-roberta",
            "tests/fixtures/models/roberta",
        ]),
    ) {
        let tokenizer = tokenizer_of(dir, max_length);
        let text = words.join(" ");
        let prefix = prefix_of(&text, cut);
        let Some(kept) = kept(&tokenizer, prefix) else {
            return Ok(());
        };
        for other in ["", "a short document", prefix_of(&text, text.len() / 3), &text] {
            let other_tokens = tokenizer.encode_text(other).unwrap().len();
            if !tokenizer.cut_splits_as_whole(kept, Some(other_tokens)) {
                continue;
            }
            let whole = tokenizer.encode(&text, other).unwrap();
            let cut = tokenizer.encode(prefix, other).unwrap();
            prop_assert_eq!(whole.ids(), cut.ids());
            let whole = tokenizer.encode(other, &text).unwrap();
            let cut = tokenizer.encode(other, prefix).unwrap();
            prop_assert_eq!(whole.ids(), cut.ids());
            prop_assert_eq!(whole.type_ids(), cut.type_ids());
        }
    }

    /// The undecided case is real: beside a text as long as itself, the cut text's odd
    /// token can go the other way. (A check that says "decided" too often fails above.)
    #[test]
    fn beside_its_own_whole_a_cut_text_is_undecided_with_an_odd_budget(
        words in prop::collection::vec("[a-z]{1,12}", 60..120),
        max_length in (4usize..30).prop_map(|n| n * 2),
    ) {
        let tokenizer = tokenizer(max_length);
        let text = words.join(" ");
        let prefix = prefix_of(&text, text.len() - 1);
        if let Some(kept) = kept(&tokenizer, prefix) {
            let whole = tokenizer.encode_text(&text).unwrap().len();
            // BERT's pair template adds 3 tokens: an even max_length leaves an odd budget.
            prop_assert!(!tokenizer.cut_splits_as_whole(kept, Some(whole)));
        }
    }
}
