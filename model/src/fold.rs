//! An ASCII-case-folded copy of a line, for literal searches that ignore
//! case (the event gate, the training-key check): every byte with bit 5
//! set, written into a per-thread buffer, so a SIMD search for a
//! lower-case word finds it in any ASCII case without a case-insensitive
//! automaton.

/// The most the per-thread copy keeps between lines.
const KEPT_BYTES: usize = 64 << 10;

thread_local! {
    static FOLDED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Every byte with bit 5 set: ASCII letters of either case become lower
/// case, and equal bytes stay equal, so a text holding a word (in any ASCII
/// case) folds to one holding the lower-case word. Other bytes fold onto
/// punctuation, digits or themselves (`@` onto `` ` ``, control bytes onto
/// digits), never onto letters: a search for a word of letters finds it in
/// the folded text exactly where it is there in some case, and a search
/// for a word with other bytes may find more, never less.
pub fn fold(byte: u8) -> u8 {
    byte | 0x20
}

/// Calls `f` with `text` folded (same length, same positions).
pub fn with_folded<R>(text: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    FOLDED.with_borrow_mut(|folded| {
        folded.clear();
        folded.extend(text.iter().map(|&b| fold(b)));
        let result = f(folded);
        // A long record (up to the line limit) leaves no big copy resident
        // behind it.
        if folded.capacity() > KEPT_BYTES {
            *folded = Vec::with_capacity(KEPT_BYTES);
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_fold_to_lower_case_and_nothing_folds_onto_a_letter() {
        with_folded(b"LoSs=NaN @[_\x01", |folded| assert_eq!(folded, b"loss=nan `{\x7f!"));
        for byte in 0..=255u8 {
            let folded = fold(byte);
            assert_eq!(folded.is_ascii_alphabetic(), byte.is_ascii_alphabetic(), "{byte:#x}");
            if byte.is_ascii_alphabetic() {
                assert_eq!(folded, byte.to_ascii_lowercase());
            }
        }
    }
}
