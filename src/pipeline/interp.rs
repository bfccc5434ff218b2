//! `${axis}` interpolation in stage parameters.
//!
//! A scalar that is exactly `${axis}` becomes the axis value itself, with its type and its position
//! in the sweep (so `sparsity: ${s}` stays a number and errors point at the offending value). A
//! scalar with `${axis}` inside other text becomes a string.

use super::yaml::{Node, NodeKind, Style};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Axis(&'a str),
}

/// Splits a scalar into text and `${axis}` references; `Err` names the problem (an unterminated
/// `${`).
pub fn pieces(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated `${{` in `{s}`"));
        };
        out.push(Piece::Axis(after[..end].trim()));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Whether every scalar in the node has well-formed `${…}` references.
pub fn well_formed(node: &Node) -> bool {
    match &node.kind {
        NodeKind::Scalar(s, _) => pieces(s).is_ok(),
        NodeKind::Seq(items) => items.iter().all(well_formed),
        NodeKind::Map(entries) => entries.iter().all(|(_, v)| well_formed(v)),
    }
}

/// Every `${…}` in a node (scalars, list items and map values; keys are never interpolated).
pub fn axes_in<'n>(node: &'n Node, out: &mut Vec<(String, &'n Node)>) {
    match &node.kind {
        NodeKind::Scalar(s, _) => {
            if let Ok(ps) = pieces(s) {
                for p in ps {
                    if let Piece::Axis(a) = p {
                        out.push((a.to_string(), node));
                    }
                }
            }
        }
        NodeKind::Seq(items) => items.iter().for_each(|n| axes_in(n, out)),
        NodeKind::Map(entries) => entries.iter().for_each(|(_, v)| axes_in(v, out)),
    }
}

/// How a substituted value came to be, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Written in the stage as is.
    Literal,
    /// Exactly `${axis}`: the node is the axis value from the sweep.
    Axis(String),
    /// Text with axis values spliced in.
    Spliced,
}

/// Substitutes axis values (`lookup` gives the value node of an axis at the current point; axes it
/// does not know are left as written, having been reported already).
pub fn substitute<'n>(node: &Node, lookup: &dyn Fn(&str) -> Option<&'n Node>) -> (Node, Origin) {
    match &node.kind {
        NodeKind::Scalar(s, _) => {
            let Ok(ps) = pieces(s) else {
                return (node.clone(), Origin::Literal);
            };
            if !ps.iter().any(|p| matches!(p, Piece::Axis(_))) {
                return (node.clone(), Origin::Literal);
            }
            if let [Piece::Axis(a)] = ps.as_slice() {
                if let Some(v) = lookup(a) {
                    return (v.clone(), Origin::Axis(a.to_string()));
                }
                return (node.clone(), Origin::Literal);
            }
            let mut text = String::new();
            for p in &ps {
                match p {
                    Piece::Text(t) => text.push_str(t),
                    Piece::Axis(a) => match lookup(a).and_then(Node::as_scalar) {
                        Some((v, _)) => text.push_str(v),
                        None => {
                            text.push_str("${");
                            text.push_str(a);
                            text.push('}');
                        }
                    },
                }
            }
            (
                Node::scalar(text, Style::Quoted, node.mark),
                Origin::Spliced,
            )
        }
        NodeKind::Seq(items) => {
            let mut spliced = false;
            let items = items
                .iter()
                .map(|n| {
                    let (n, o) = substitute(n, lookup);
                    spliced |= o != Origin::Literal;
                    n
                })
                .collect();
            let kind = NodeKind::Seq(items);
            let origin = if spliced {
                Origin::Spliced
            } else {
                Origin::Literal
            };
            (
                Node {
                    kind,
                    mark: node.mark,
                },
                origin,
            )
        }
        NodeKind::Map(entries) => {
            let mut spliced = false;
            let entries = entries
                .iter()
                .map(|(k, v)| {
                    let (v, o) = substitute(v, lookup);
                    spliced |= o != Origin::Literal;
                    (k.clone(), v)
                })
                .collect();
            let origin = if spliced {
                Origin::Spliced
            } else {
                Origin::Literal
            };
            (
                Node {
                    kind: NodeKind::Map(entries),
                    mark: node.mark,
                },
                origin,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::ParamValue;
    use crate::pipeline::yaml::Mark;

    fn at(line: usize, col: usize) -> Mark {
        Mark { line, col }
    }

    #[test]
    fn splits_text_and_axes() {
        assert_eq!(
            pieces("run-${method}_${ s }!").unwrap(),
            vec![
                Piece::Text("run-"),
                Piece::Axis("method"),
                Piece::Text("_"),
                Piece::Axis("s"),
                Piece::Text("!"),
            ]
        );
        assert_eq!(pieces("plain").unwrap(), vec![Piece::Text("plain")]);
        assert!(pieces("a ${b").is_err());
    }

    #[test]
    fn exact_reference_keeps_the_type_and_position_of_the_axis_value() {
        let value = Node::scalar("0.5", Style::Plain, at(9, 20));
        let lookup = |a: &str| (a == "s").then_some(&value);
        let (n, o) = substitute(&Node::scalar("${s}", Style::Quoted, at(3, 15)), &lookup);
        assert_eq!(n.value(), Some(ParamValue::Float(0.5)));
        assert_eq!(n.mark, at(9, 20));
        assert_eq!(o, Origin::Axis("s".into()));
    }

    #[test]
    fn embedded_reference_makes_a_string_at_the_parameter() {
        let value = Node::scalar("0.5", Style::Plain, at(9, 20));
        let lookup = |a: &str| (a == "s").then_some(&value);
        let (n, o) = substitute(&Node::scalar("s=${s}", Style::Plain, at(3, 15)), &lookup);
        assert_eq!(n.value(), Some(ParamValue::Str("s=0.5".into())));
        assert_eq!(n.mark, at(3, 15));
        assert_eq!(o, Origin::Spliced);
        // A quoted axis value stays a string even when it looks like a number.
        let q = Node::scalar("8", Style::Quoted, at(1, 1));
        let lookup = |_: &str| Some(&q);
        let (n, _) = substitute(&Node::scalar("${b}", Style::Plain, at(2, 2)), &lookup);
        assert_eq!(n.value(), Some(ParamValue::Str("8".into())));
    }
}
