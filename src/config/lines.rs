//! Maps YAML key paths (`connection_pool.pools[1].max_connections`) to the
//! line they stand on, so validation errors found after deserialization can
//! still point at the file.
//!
//! serde_yaml keeps no positions once a value is deserialized; this walks the
//! parser's events once and records where every key and sequence item starts.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line numbers (1-based) of every key and sequence item in a YAML document.
#[derive(Debug, Default)]
pub(crate) struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// Indexes `text`; a document the parser rejects yields an empty index
    /// (serde_yaml reports the syntax error with its own position).
    pub(crate) fn build(text: &str) -> LineIndex {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut walker, false).is_err() {
            return LineIndex::default();
        }
        LineIndex {
            lines: walker.lines,
        }
    }

    /// The line of `path`, or of its nearest indexed ancestor.
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        let mut candidate = path;
        loop {
            if let Some(line) = self.lines.get(candidate) {
                return Some(*line);
            }
            let cut = candidate.rfind(['.', '['])?;
            candidate = &candidate[..cut];
        }
    }
}

enum Frame {
    Mapping {
        path: String,
        pending_key: Option<String>,
    },
    Sequence {
        path: String,
        next_index: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Walker {
    /// The path of the value about to start at the top of the stack, and
    /// advances the parent past it.
    fn next_value_path(&mut self, line: usize) -> String {
        match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Mapping { path, pending_key }) => {
                let key = pending_key.take().unwrap_or_default();
                join_key(path, &key)
            }
            Some(Frame::Sequence { path, next_index }) => {
                let item = format!("{path}[{next_index}]");
                *next_index += 1;
                self.lines.entry(item.clone()).or_insert(line);
                item
            }
        }
    }
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let line = mark.line();
        match event {
            Event::Scalar(text, ..) => {
                if let Some(Frame::Mapping { path, pending_key }) = self.stack.last_mut() {
                    if pending_key.is_none() {
                        let key_path = join_key(path, &text);
                        self.lines.entry(key_path).or_insert(line);
                        *pending_key = Some(text);
                        return;
                    }
                }
                self.next_value_path(line);
            }
            Event::Alias(_) => {
                self.next_value_path(line);
            }
            Event::MappingStart(..) => {
                let path = self.next_value_path(line);
                self.stack.push(Frame::Mapping {
                    path,
                    pending_key: None,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.next_value_path(line);
                self.stack.push(Frame::Sequence {
                    path,
                    next_index: 0,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_items() {
        let text = "a:\n  b: 1\n  list:\n    - name: x\n      port: 2\n    - name: y\n";
        let index = LineIndex::build(text);
        assert_eq!(index.line_of("a"), Some(1));
        assert_eq!(index.line_of("a.b"), Some(2));
        assert_eq!(index.line_of("a.list[0].port"), Some(5));
        assert_eq!(index.line_of("a.list[1].name"), Some(6));
        assert_eq!(index.line_of("a.list[1].missing"), Some(6));
    }
}
