//! Where each value of a YAML document stands, by path.
//!
//! Semantic checks work on typed values, which know nothing of lines. This
//! index maps a dotted path (`schedule.cron`, `betas.1`) to the location of
//! the key and of the value, so a diagnostic can underline the exact token.

use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A position in a source file: 1-based line and column, byte offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Length of the token in characters (at least 1 when rendered).
    pub len: usize,
}

impl Pos {
    /// A position from serde-saphyr's location type.
    pub fn from_location(location: &serde_saphyr::Location) -> Pos {
        Pos { line: location.line() as usize, column: location.column() as usize, len: location.span().len() as usize }
    }
}

/// Key and value positions of one mapping entry or sequence element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The key (for sequence elements: the element itself).
    pub key: Pos,
    /// The value.
    pub value: Pos,
}

/// Locations of every node of a document, by dotted path.
#[derive(Debug, Clone, Default)]
pub struct SpanIndex {
    entries: HashMap<String, Entry>,
}

impl SpanIndex {
    /// Parses `source` as YAML and records every path. Errors are YAML
    /// syntax errors (duplicate keys included).
    pub fn parse(source: &str) -> Result<SpanIndex, serde_saphyr::Error> {
        let root: Spanned<Node> = serde_saphyr::from_str_with_options(source, yaml_options())?;
        let mut index = SpanIndex::default();
        index.walk("", &root.value);
        Ok(index)
    }

    /// Key and value positions of the node at `path`.
    pub fn get(&self, path: &str) -> Option<Entry> {
        self.entries.get(path).copied()
    }

    /// Value position of `path`, else of its nearest ancestor that exists.
    pub fn value_or_parent(&self, path: &str) -> Pos {
        self.nearest(path, |entry| entry.value)
    }

    /// Key position of `path`, else of its nearest ancestor that exists.
    pub fn key_or_parent(&self, path: &str) -> Pos {
        self.nearest(path, |entry| entry.key)
    }

    /// The position of the document's first top-level key (1:1 when there is none).
    pub fn first_top_level_key(&self) -> Pos {
        self.entries
            .iter()
            .filter(|(path, _)| !path.contains('.'))
            .map(|(_, entry)| entry.key)
            .min_by_key(|pos| (pos.line, pos.column))
            .unwrap_or(Pos { line: 1, column: 1, len: 1 })
    }

    /// The path whose key or value starts at `line:column`, if any.
    pub fn path_at(&self, line: usize, column: usize) -> Option<String> {
        let starts_at = |pos: Pos| pos.line == line && pos.column == column;
        self.entries
            .iter()
            .filter(|(_, entry)| starts_at(entry.value) || starts_at(entry.key))
            .map(|(path, _)| path)
            .max_by_key(|path| path.len())
            .cloned()
    }

    fn nearest(&self, path: &str, pick: impl Fn(Entry) -> Pos) -> Pos {
        let mut current = path;
        loop {
            if let Some(entry) = self.entries.get(current) {
                return pick(*entry);
            }
            match current.rfind('.') {
                Some(dot) => current = &current[..dot],
                None => return Pos { line: 1, column: 1, len: 1 },
            }
        }
    }

    fn walk(&mut self, prefix: &str, node: &Node) {
        let join = |name: &str| {
            if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") }
        };
        match node {
            Node::Scalar => {}
            Node::Seq(elements) => {
                for (i, element) in elements.iter().enumerate() {
                    let path = join(&i.to_string());
                    let pos = Pos::from_location(&element.referenced);
                    self.entries.insert(path.clone(), Entry { key: pos, value: pos });
                    self.walk(&path, &element.value);
                }
            }
            Node::Map(pairs) => {
                for (key, value) in pairs {
                    let path = join(&key.value);
                    let entry = Entry {
                        key: Pos::from_location(&key.referenced),
                        value: Pos::from_location(&value.referenced),
                    };
                    self.entries.insert(path.clone(), entry);
                    self.walk(&path, &value.value);
                }
            }
        }
    }
}

/// The options every manifest is read with: duplicate keys are errors.
pub fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    }
}

/// A YAML node reduced to its shape; scalars keep only their location.
enum Node {
    Scalar,
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i128<E>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u128<E>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element()? {
            elements.push(element);
        }
        Ok(Node::Seq(elements))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut pairs = Vec::new();
        while let Some(pair) = map.next_entry::<Spanned<KeyText>, Spanned<Node>>()? {
            let key = Spanned { value: pair.0.value.0, referenced: pair.0.referenced, defined: pair.0.defined };
            pairs.push((key, pair.1));
        }
        Ok(Node::Map(pairs))
    }
}

/// A mapping key of any scalar type, as text (`1: x` has the key `1`).
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<KeyText, E> {
                Ok(KeyText("null".to_owned()))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_keys_and_values() {
        let index = SpanIndex::parse("model: x\nschedule:\n  cron: \"0 0 * * *\"\nbetas: [a, b]\n").unwrap();
        let cron = index.get("schedule.cron").unwrap();
        assert_eq!((cron.key.line, cron.key.column), (3, 3));
        assert_eq!((cron.value.line, cron.value.column, cron.value.len), (3, 9, 11));
        let beta = index.get("betas.1").unwrap();
        assert_eq!((beta.value.line, beta.value.column), (4, 12));
    }

    #[test]
    fn missing_paths_fall_back_to_the_parent() {
        let index = SpanIndex::parse("schedule:\n  cron: x\n").unwrap();
        assert_eq!(index.key_or_parent("schedule.timezone").line, 1);
        assert_eq!(index.value_or_parent("nothing.here"), Pos { line: 1, column: 1, len: 1 });
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = SpanIndex::parse("model: a\nmodel: b\n").unwrap_err();
        assert_eq!(err.location().unwrap().line(), 2);
    }
}
