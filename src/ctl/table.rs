//! Plain aligned columns for `poolplane ctl`'s table output, and the small
//! formatters its cells use (milliseconds, percentages, times, enum names).
//! Every text that came from the server goes through [`printable`], so a
//! pool name or an error message cannot move the cursor or change colours.

use std::fmt::Write as _;

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A header line and rows, each column as wide as its widest cell, two
/// spaces apart, no trailing spaces.
pub(crate) struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; its cells are made printable.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.iter().map(|cell| printable(cell)).collect());
    }

    pub(crate) fn render(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|row| row.get(i))
                .map(|cell| cell.chars().count())
                .chain([self.columns[i].0.len()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.columns.len()).map(width).collect();
        let headers: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (_, align)) in self.columns.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                if *align == Align::Right {
                    line.push_str(&" ".repeat(pad));
                }
                line.push_str(cell);
                if *align == Align::Left {
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key  value` lines, keys aligned (one pool, one reload report).
pub(crate) fn pairs(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let _ = writeln!(out, "{key:<width$}  {}", printable(value));
    }
    out
}

/// The text with control, invisible and direction-changing characters escaped.
pub(crate) use poolplane::display::escaped as printable;

/// Milliseconds, to a tenth below 100, whole above.
pub(crate) fn ms(value: f64) -> String {
    if value < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// A ratio as a percentage, to a tenth.
pub(crate) fn percent(ratio: f64) -> String {
    format!("{:.1}", ratio * 100.0)
}

/// A span of milliseconds for people: `850ms`, `12.3s`, `4m05s`, `2h03m`.
pub(crate) fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// A timestamp as RFC 3339 UTC with milliseconds; `-` when unset.
pub(crate) fn time(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(|t| {
        let nanos = u32::try_from(t.nanos).ok()?;
        chrono::DateTime::from_timestamp(t.seconds, nanos)
    })
    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    .unwrap_or_else(|| "-".into())
}

/// An enum's proto name without its prefix, lower case:
/// `HEALTH_STATE_HEALTHY` → `healthy`; an unknown value as its number.
pub(crate) fn short(full: Option<&str>, prefix: &str, value: i32) -> String {
    match full {
        Some(name) => name
            .strip_prefix(prefix)
            .unwrap_or(name)
            .to_ascii_lowercase(),
        None => value.to_string(),
    }
}

/// `-` for an empty text.
pub(crate) fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_without_trailing_spaces() {
        let mut table = Table::new(&[("POOL", Align::Left), ("MAX", Align::Right)]);
        table.row(vec!["orders".into(), "4".into()]);
        table.row(vec!["b".into(), "100".into()]);
        assert_eq!(table.render(), "POOL    MAX\norders    4\nb       100\n");
        let mut table = Table::new(&[("A", Align::Left), ("NOTE", Align::Left)]);
        table.row(vec!["x".into(), "two\nlines".into()]);
        assert_eq!(table.render(), "A  NOTE\nx  two\\nlines\n");
    }

    #[test]
    fn cells_are_formatted_for_people() {
        assert_eq!(ms(0.26), "0.3");
        assert_eq!(ms(1234.5), "1234");
        assert_eq!(percent(0.5), "50.0");
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_345), "12.3s");
        assert_eq!(age(245_000), "4m05s");
        assert_eq!(age(7_380_000), "2h03m");
        let t = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_000_000,
        };
        assert_eq!(time(Some(&t)), "2023-11-14T22:13:20.123Z");
        assert_eq!(time(None), "-");
        assert_eq!(
            short(Some("HEALTH_STATE_HEALTHY"), "HEALTH_STATE_", 2),
            "healthy"
        );
        assert_eq!(short(None, "HEALTH_STATE_", 9), "9");
    }
}
