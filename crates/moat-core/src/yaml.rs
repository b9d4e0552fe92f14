//! The YAML walk shared by the config parsers (lb, guard): every error
//! located as FILE:LINE:COL, the first MAX_ERRORS_KEPT kept, all counted.

use std::path::{Path, PathBuf};

use marked_yaml::{LoaderOptions, Node};

use crate::fw::policy::{
    MAX_ERRORS_KEPT, PolicyError as ConfigError,
    parser::{load_error, node_pos, shorten},
};

pub struct Walker {
    pub file: PathBuf,
    /// The first errors (at most MAX_ERRORS_KEPT).
    pub errors: Vec<ConfigError>,
    /// How many errors in all.
    pub total: usize,
}

pub type At = (usize, usize);

/// Milliseconds in `300ms`, `1s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (s, 1000)
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

impl Walker {
    pub fn new(path: &Path) -> Walker {
        Walker {
            file: path.to_path_buf(),
            errors: Vec::new(),
            total: 0,
        }
    }

    pub fn err(&mut self, at: At, msg: impl Into<String>) {
        self.total += 1;
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(ConfigError {
                file: self.file.clone(),
                line: at.0,
                col: at.1,
                msg: shorten(msg.into()),
            });
        }
    }

    pub fn scalar<'a>(&mut self, n: &'a Node, what: &str) -> Option<&'a str> {
        match n.as_scalar() {
            Some(s) => Some(s.as_str()),
            None => {
                self.err(node_pos(n), format!("expected {what}"));
                None
            }
        }
    }

    pub fn number(&mut self, n: &Node, what: &str, lo: u64, hi: u64) -> Option<u64> {
        let s = self.scalar(n, what)?;
        match s.parse::<u64>() {
            Ok(v) if (lo..=hi).contains(&v) => Some(v),
            _ => {
                self.err(
                    node_pos(n),
                    format!("{s:?} is not {what} (a whole number from {lo} to {hi})"),
                );
                None
            }
        }
    }

    pub fn duration_ms(&mut self, n: &Node, lo: u64, hi: u64) -> Option<u64> {
        let s = self.scalar(n, "a duration such as 300ms, 1s, 30s, 2m")?;
        match parse_ms(s) {
            Some(v) if (lo..=hi).contains(&v) => Some(v),
            _ => {
                self.err(
                    node_pos(n),
                    format!(
                        "{s:?} is not a duration from {lo}ms to {}s (e.g. 300ms, 1s, 2m)",
                        hi / 1000
                    ),
                );
                None
            }
        }
    }

    pub fn mapping<'a>(
        &mut self,
        n: &'a Node,
        what: &str,
    ) -> Option<&'a marked_yaml::types::MarkedMappingNode> {
        match n.as_mapping() {
            Some(m) => Some(m),
            None => {
                self.err(node_pos(n), format!("{what} must be a mapping"));
                None
            }
        }
    }

    pub fn list<'a>(&mut self, n: &'a Node) -> Vec<&'a Node> {
        match n {
            Node::Sequence(s) => s.iter().collect(),
            Node::Scalar(s) if s.as_str().is_empty() => vec![],
            Node::Scalar(_) => vec![n],
            Node::Mapping(_) => {
                self.err(node_pos(n), "expected a value or a list, found a mapping");
                vec![]
            }
        }
    }

    /// Parses `text` (duplicate keys are errors) and returns its root when
    /// it is a mapping; otherwise records an error, saying `must_be` where
    /// the document is not a mapping.
    pub fn root(&mut self, text: &str, must_be: &str) -> Option<Node> {
        let opts = LoaderOptions::default().error_on_duplicate_keys(true);
        let root = match marked_yaml::parse_yaml_with_options(0, text, opts) {
            Ok(n) => n,
            Err(e) => {
                let (at, msg) = load_error(&e);
                let msg = if msg.starts_with("the policy must be a mapping") {
                    must_be.to_string()
                } else {
                    msg
                };
                self.err(at, msg);
                return None;
            }
        };
        if root.as_mapping().is_none() {
            self.err(node_pos(&root), must_be);
            return None;
        }
        Some(root)
    }
}
