//! Plain-text tables for the operator commands (`status`, `retry`, `replay`): a leaf, so that the
//! commands share it without importing each other.

/// A plain-text table: a header line and one line per row, columns padded to their widest cell and two
/// spaces apart, the last column left unpadded. Indented by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::from("  ");
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.into_iter().enumerate() {
            out.push_str(cell);
            if i != last {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `text` cut to `max` characters, with `...` when cut.
pub fn clip(text: &str, max: usize) -> String {
    let text = text.replace(['\n', '\r'], " ");
    if text.chars().count() <= max {
        text
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(3)).collect();
        cut.push_str("...");
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_every_column_but_the_last() {
        let text = table(
            &["a", "bb", "c"],
            &[vec!["xxx".into(), "y".into(), "zzzz".into()]],
        );
        assert_eq!(text, "  a    bb  c\n  xxx  y   zzzz\n");
    }

    #[test]
    fn clipped_text_is_one_line_and_marked() {
        assert_eq!(clip("ab\ncd", 10), "ab cd");
        assert_eq!(clip("abcdefghij", 6), "abc...");
    }
}
