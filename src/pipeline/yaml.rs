//! A YAML tree that remembers where each node came from.
//!
//! Built from yaml-rust2's event parser so that every node carries its line and column. Anchors and
//! aliases are resolved (an alias is a copy of the anchored node, placed at the alias), `<<` merge
//! keys are applied (keys already in the map win; among merged maps the earlier wins, as YAML 1.1
//! says), and duplicate keys are reported.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::cache::key::ParamValue;

use super::diag::Sink;

/// A 1-based position in the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

impl Mark {
    fn from_marker(m: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Mark {
            line: m.line().max(1),
            col: m.col() + 1,
        }
    }
}

/// Whether a scalar was written bare (and so may be a number, bool or null) or quoted/block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Plain,
    Quoted,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    Scalar(String, Style),
    Seq(Vec<Node>),
    /// Entries in file order (merged entries after the map's own).
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub mark: Mark,
}

/// Above this many nodes, alias expansion is refused (a "billion laughs" file would exhaust memory).
const MAX_NODES: usize = 1_000_000;

/// Deeper nesting is refused: the tree is walked recursively, and pipelines are a few levels deep.
const MAX_DEPTH: usize = 128;

impl Node {
    pub fn scalar(text: impl Into<String>, style: Style, mark: Mark) -> Self {
        Node {
            kind: NodeKind::Scalar(text.into(), style),
            mark,
        }
    }

    pub fn as_scalar(&self) -> Option<(&str, Style)> {
        match &self.kind {
            NodeKind::Scalar(s, st) => Some((s.as_str(), *st)),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.kind {
            NodeKind::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar(s, Style::Plain) if is_null(s))
    }

    /// The scalar's typed value under the YAML 1.2 core schema; `None` for null and collections.
    pub fn value(&self) -> Option<ParamValue> {
        let (s, style) = self.as_scalar()?;
        if style == Style::Quoted {
            return Some(ParamValue::Str(s.to_string()));
        }
        plain_value(s)
    }

    /// A short description of the node for "found …" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Map(_) => "a map".into(),
            NodeKind::Scalar(_, _) if self.is_null() => "nothing (null)".into(),
            NodeKind::Scalar(s, Style::Quoted) => format!("the string {s:?}"),
            NodeKind::Scalar(s, Style::Plain) => format!("`{s}`"),
        }
    }

    fn depth(&self) -> usize {
        match &self.kind {
            NodeKind::Scalar(..) => 0,
            NodeKind::Seq(v) => 1 + v.iter().map(Node::depth).max().unwrap_or(0),
            NodeKind::Map(m) => {
                1 + m
                    .iter()
                    .map(|(k, v)| k.depth().max(v.depth()))
                    .max()
                    .unwrap_or(0)
            }
        }
    }

    fn count(&self) -> usize {
        match &self.kind {
            NodeKind::Scalar(..) => 1,
            NodeKind::Seq(v) => 1 + v.iter().map(Node::count).sum::<usize>(),
            NodeKind::Map(m) => 1 + m.iter().map(|(k, v)| k.count() + v.count()).sum::<usize>(),
        }
    }
}

fn is_null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

/// The core schema's reading of a plain scalar.
pub fn plain_value(s: &str) -> Option<ParamValue> {
    if is_null(s) {
        return None;
    }
    match s {
        "true" | "True" | "TRUE" => return Some(ParamValue::Bool(true)),
        "false" | "False" | "FALSE" => return Some(ParamValue::Bool(false)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Some(ParamValue::Float(f64::INFINITY))
        }
        "-.inf" | "-.Inf" | "-.INF" => return Some(ParamValue::Float(f64::NEG_INFINITY)),
        ".nan" | ".NaN" | ".NAN" => return Some(ParamValue::Float(f64::NAN)),
        _ => {}
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // Too large for i64: keep it as text rather than silently rounding.
        return Some(match s.parse::<i64>() {
            Ok(i) => ParamValue::Int(i),
            Err(_) => ParamValue::Str(s.to_string()),
        });
    }
    if let Some(hex) = s.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Some(ParamValue::Int(i));
        }
    }
    if let Some(oct) = s.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Some(ParamValue::Int(i));
        }
    }
    if is_float_syntax(digits) {
        if let Ok(x) = s.parse::<f64>() {
            return Some(ParamValue::Float(x));
        }
    }
    Some(ParamValue::Str(s.to_string()))
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, the core schema's float (sign stripped).
fn is_float_syntax(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let int_digits = {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i - start
    };
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - start;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    i == b.len()
}

enum Frame {
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>, Option<Node>),
}

struct Builder {
    stack: Vec<(Frame, Mark, usize)>,
    /// Anchored nodes with their node count and depth.
    anchors: HashMap<usize, (Node, usize, usize)>,
    root: Option<Node>,
    documents: usize,
    second_document: Option<Mark>,
    nodes: usize,
    error: Option<(Mark, String)>,
}

impl Builder {
    fn push(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some((Frame::Seq(items), _, _)) => items.push(node),
            Some((Frame::Map(entries, pending), _, _)) => match pending.take() {
                Some(key) => {
                    let mut node = node;
                    // An empty value is reported by the parser at the next token; the key is a
                    // better place to point at.
                    if node.as_scalar() == Some(("", Style::Plain)) {
                        node.mark = key.mark;
                    }
                    entries.push((key, node))
                }
                None => *pending = Some(node),
            },
        }
    }

    fn finish_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            let (n, d) = (node.count(), node.depth());
            self.anchors.insert(anchor, (node.clone(), n, d));
        }
        self.push(node);
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, marker: Marker) {
        if self.error.is_some() {
            return;
        }
        let mark = Mark::from_marker(marker);
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.second_document = Some(mark);
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let explicit_str = tag
                    .as_ref()
                    .is_some_and(|t| t.handle == "tag:yaml.org,2002:" && t.suffix == "str");
                let style = match style {
                    TScalarStyle::Plain if !explicit_str => Style::Plain,
                    _ => Style::Quoted,
                };
                self.nodes += 1;
                self.finish_node(Node::scalar(text, style, mark), anchor);
            }
            Event::SequenceStart(anchor, _) => {
                self.nodes += 1;
                self.stack.push((Frame::Seq(Vec::new()), mark, anchor));
            }
            Event::MappingStart(anchor, _) => {
                self.nodes += 1;
                self.stack
                    .push((Frame::Map(Vec::new(), None), mark, anchor));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some((frame, start, anchor)) = self.stack.pop() else {
                    return;
                };
                let mut mark = start;
                let kind = match frame {
                    Frame::Seq(items) => NodeKind::Seq(items),
                    Frame::Map(entries, _) => {
                        // The parser places a block mapping just after its first key.
                        if let Some((k, _)) = entries.first() {
                            mark = mark.min(k.mark);
                        }
                        NodeKind::Map(entries)
                    }
                };
                self.finish_node(Node { kind, mark }, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((node, n, d)) => {
                    if self.stack.len() + d > MAX_DEPTH {
                        self.error = Some((
                            mark,
                            format!("aliases nest values more than {MAX_DEPTH} levels deep"),
                        ));
                        return;
                    }
                    self.nodes += n;
                    if self.nodes > MAX_NODES {
                        self.error = Some((
                            mark,
                            format!("aliases expand to more than {MAX_NODES} nodes"),
                        ));
                        return;
                    }
                    let mut node = node.clone();
                    node.mark = mark;
                    self.push(node);
                }
                None => {
                    self.error = Some((
                        mark,
                        "this alias refers to its own enclosing anchor (a recursive alias)".into(),
                    ))
                }
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// Parses `source`; returns the root node (`None` for an empty file). Syntax errors, duplicate
/// keys and bad merges are reported to `sink`.
pub fn parse(source: &str, sink: &mut Sink) -> Option<Node> {
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        documents: 0,
        second_document: None,
        nodes: 0,
        error: None,
    };
    // Events are pulled one by one (rather than with `Parser::load`, which recurses per level) so
    // that deep nesting is refused before anything overflows the stack.
    let mut parser = Parser::new_from_str(source);
    let mut depth = 0usize;
    loop {
        let (ev, marker) = match parser.next_token() {
            Ok(x) => x,
            Err(e) => {
                let mark = Mark::from_marker(*e.marker());
                // The scanner may report a tab at the start of the scalar before it, lines up.
                if e.info().contains("tab") {
                    if let Some(at) = first_tab(source, mark) {
                        sink.error(
                            at,
                            "",
                            format!("YAML syntax error: a tab character ({})", e.info()),
                        )
                        .with_help("YAML indents with spaces only: replace the tab with spaces");
                        return None;
                    }
                }
                sink.error(mark, "", format!("YAML syntax error: {}", e.info()))
                    .with_help("check the indentation and quoting around this position");
                return None;
            }
        };
        match ev {
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    let mark = Mark::from_marker(marker);
                    sink.error(
                        mark,
                        "",
                        format!("values nested more than {MAX_DEPTH} levels deep"),
                    );
                    return None;
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
        let end = ev == Event::StreamEnd;
        b.on_event(ev, marker);
        if end || b.error.is_some() {
            break;
        }
    }
    if let Some((mark, msg)) = b.error.take() {
        sink.error(mark, "", msg);
        return None;
    }
    if let Some(mark) = b.second_document {
        sink.error(
            mark,
            "",
            "a pipeline file holds one YAML document, found a second",
        )
        .with_help("remove the `---` line or split the file");
    }
    let root = b.root?;
    Some(normalize(root, "", sink))
}

/// The first tab on `from`'s line or after it.
fn first_tab(source: &str, from: Mark) -> Option<Mark> {
    for (i, line) in source.lines().enumerate().skip(from.line.saturating_sub(1)) {
        if let Some(c) = line.chars().position(|c| c == '\t') {
            return Some(Mark {
                line: i + 1,
                col: c + 1,
            });
        }
    }
    None
}

/// Joins a key path: `a` + `b` → `a.b`.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn key_text(n: &Node) -> Option<&str> {
    n.as_scalar().map(|(s, _)| s)
}

/// Applies merge keys and reports duplicate keys, depth first.
fn normalize(node: Node, path: &str, sink: &mut Sink) -> Node {
    let mark = node.mark;
    let kind = match node.kind {
        NodeKind::Scalar(..) => return node,
        NodeKind::Seq(items) => NodeKind::Seq(
            items
                .into_iter()
                .enumerate()
                .map(|(i, n)| normalize(n, &format!("{path}[{i}]"), sink))
                .collect(),
        ),
        NodeKind::Map(entries) => {
            let mut out: Vec<(Node, Node)> = Vec::with_capacity(entries.len());
            let mut merges = Vec::new();
            for (k, v) in entries {
                let kt = key_text(&k).unwrap_or("?").to_string();
                let v = normalize(v, &join(path, &kt), sink);
                if k.as_scalar() == Some(("<<", Style::Plain)) {
                    merges.push((k.mark, v));
                    continue;
                }
                let prev = key_text(&k).and_then(|t| {
                    out.iter()
                        .find(|(pk, _)| key_text(pk) == Some(t))
                        .map(|(pk, _)| pk.mark)
                });
                if let Some(first) = prev {
                    sink.error(
                        k.mark,
                        join(path, &kt),
                        format!("duplicate key `{kt}` (first given on line {})", first.line),
                    )
                    .with_help("each key may appear once in a map; remove one of them");
                    continue;
                }
                out.push((k, v));
            }
            for (mmark, m) in merges {
                let sources: Vec<Node> = match m.kind {
                    NodeKind::Map(_) => vec![m],
                    NodeKind::Seq(items) => items,
                    NodeKind::Scalar(..) => vec![m],
                };
                for src in sources {
                    match src.kind {
                        NodeKind::Map(es) => {
                            for (k, v) in es {
                                let present = key_text(&k).is_some_and(|t| {
                                    out.iter().any(|(pk, _)| key_text(pk) == Some(t))
                                });
                                if !present {
                                    out.push((k, v));
                                }
                            }
                        }
                        _ => {
                            sink.error(
                                src.mark.max(mmark),
                                join(path, "<<"),
                                "a merge key `<<` takes a map or a list of maps",
                            )
                            .with_help("write `<<: *anchor` or `<<: [*a, *b]`");
                        }
                    }
                }
            }
            NodeKind::Map(out)
        }
    };
    Node { kind, mark }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse_ok(src: &str) -> Node {
        let mut sink = Sink::new(PathBuf::from("t.yaml"), src);
        let n = parse(src, &mut sink);
        let d = sink.finish();
        assert!(d.is_empty(), "{d}");
        n.expect("a document")
    }

    fn parse_err(src: &str) -> Vec<super::super::diag::Diagnostic> {
        let mut sink = Sink::new(PathBuf::from("t.yaml"), src);
        let _ = parse(src, &mut sink);
        sink.finish().0
    }

    fn get<'a>(n: &'a Node, key: &str) -> &'a Node {
        n.as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| key_text(k) == Some(key))
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no key {key}"))
    }

    #[test]
    fn positions_are_one_based_line_and_column() {
        let n = parse_ok("a: 1\nbb:\n  c: [x, 'y']\n");
        assert_eq!(n.mark, Mark { line: 1, col: 1 });
        let (k, v) = &n.as_map().unwrap()[0];
        assert_eq!(k.mark, Mark { line: 1, col: 1 });
        assert_eq!(v.mark, Mark { line: 1, col: 4 });
        let c = get(get(&n, "bb"), "c");
        assert_eq!(c.mark, Mark { line: 3, col: 6 });
        let items = c.as_seq().unwrap();
        assert_eq!(items[0].mark, Mark { line: 3, col: 7 });
        assert_eq!(items[1].mark, Mark { line: 3, col: 10 });
        assert_eq!(items[1].as_scalar(), Some(("y", Style::Quoted)));
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        assert_eq!(plain_value("12"), Some(ParamValue::Int(12)));
        assert_eq!(plain_value("-1"), Some(ParamValue::Int(-1)));
        assert_eq!(plain_value("0.5"), Some(ParamValue::Float(0.5)));
        assert_eq!(plain_value("5e-1"), Some(ParamValue::Float(0.5)));
        assert_eq!(plain_value(".5"), Some(ParamValue::Float(0.5)));
        assert_eq!(plain_value("true"), Some(ParamValue::Bool(true)));
        assert_eq!(plain_value("2:4"), Some(ParamValue::Str("2:4".into())));
        assert_eq!(plain_value("1e"), Some(ParamValue::Str("1e".into())));
        assert_eq!(plain_value("~"), None);
        let n = parse_ok("a: '12'\nb: 12\n");
        assert_eq!(get(&n, "a").value(), Some(ParamValue::Str("12".into())));
        assert_eq!(get(&n, "b").value(), Some(ParamValue::Int(12)));
    }

    #[test]
    fn aliases_copy_the_anchor_at_the_alias_position() {
        let n = parse_ok("a: &x {k: 1}\nb: *x\n");
        let b = get(&n, "b");
        assert_eq!(b.mark, Mark { line: 2, col: 4 });
        assert_eq!(get(b, "k").value(), Some(ParamValue::Int(1)));
        // The copied children keep where they were written.
        assert_eq!(get(b, "k").mark, Mark { line: 1, col: 11 });
    }

    #[test]
    fn merge_keys_keep_present_keys_and_prefer_earlier_maps() {
        let src =
            "a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc:\n  <<: [*a, *b]\n  x: 3\nd:\n  <<: *b\n";
        let n = parse_ok(src);
        let c = get(&n, "c");
        let keys: Vec<&str> = c
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| key_text(k).unwrap())
            .collect();
        assert_eq!(keys, ["x", "y", "z"]);
        assert_eq!(get(c, "x").value(), Some(ParamValue::Int(3)));
        assert_eq!(get(c, "y").value(), Some(ParamValue::Int(1)));
        assert_eq!(get(c, "z").value(), Some(ParamValue::Int(2)));
        assert_eq!(get(get(&n, "d"), "y").value(), Some(ParamValue::Int(2)));
    }

    #[test]
    fn duplicate_keys_are_reported_at_the_second() {
        let d = parse_err("s:\n  a: 1\n  b: 2\n  a: 3\n");
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].line, d[0].col), (4, 3));
        assert_eq!(d[0].key_path, "s.a");
        assert!(
            d[0].message.contains("first given on line 2"),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn bad_merge_and_syntax_errors_are_reported() {
        let d = parse_err("a:\n  <<: 3\n");
        assert_eq!(d.len(), 1);
        assert!(d[0].message.contains("merge key"));
        let d = parse_err("a: [1, 2\nb: 3\n");
        assert_eq!(d.len(), 1);
        assert!(
            d[0].message.starts_with("YAML syntax error"),
            "{}",
            d[0].message
        );
        let d = parse_err("a: *nope\n");
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let d = parse_err(&src);
        assert_eq!(d.len(), 1);
        assert!(d[0].message.contains("aliases expand"), "{}", d[0].message);
    }

    #[test]
    fn empty_file_has_no_root() {
        let mut sink = Sink::new(PathBuf::from("t.yaml"), "");
        assert!(parse("", &mut sink).is_none());
        assert!(!sink.has_errors());
    }
}
