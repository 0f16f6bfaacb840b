//! Text that ends up on someone's terminal or page: which characters would
//! change what they see rather than show themselves. Control characters
//! move the cursor or clear the screen; bidirectional marks, embeddings,
//! overrides and isolates (the "Trojan Source" characters) reorder what
//! follows them, so a line can read differently from what it holds; line
//! and paragraph separators break a line where none shows in the text;
//! zero-width spaces, the word joiner and the byte-order mark are there
//! without being seen.

/// Whether `c` would act on a display instead of appearing on it.
pub fn misleading(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// `text` with every [`misleading`] character written as its escape
/// (`\u{202e}`, `\n`), so it shows what it holds.
pub fn escaped(text: &str) -> String {
    if !text.chars().any(misleading) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if misleading(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_direction_changes_are_escaped_and_the_rest_is_kept() {
        assert_eq!(escaped("pool é 池"), "pool é 池");
        assert_eq!(escaped("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert_eq!(escaped("ok\u{202E}gnp.exe"), "ok\\u{202e}gnp.exe");
        assert_eq!(escaped("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
        assert!(misleading('\u{200F}') && misleading('\u{061C}'));
        assert_eq!(
            escaped("a\u{2028}b\u{200B}c\u{FEFF}"),
            "a\\u{2028}b\\u{200b}c\\u{feff}"
        );
        assert!(!misleading('\u{200D}'), "a joiner only joins");
    }
}
