//! Diagnostics: every problem found in a pipeline file, with its position, rendered rustc-style.

use std::fmt;
use std::path::PathBuf;

use super::yaml::Mark;

/// One problem in a pipeline file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
    /// Dotted path of the key concerned, e.g. `stages.prune.sparsity`; empty for the whole file.
    pub key_path: String,
    pub message: String,
    /// What was expected there, when the problem is a wrong value.
    pub expected: Option<String>,
    /// What to do about it.
    pub help: Option<String>,
    /// The source line the position falls on, for rendering.
    pub snippet: Option<String>,
}

impl Diagnostic {
    fn render(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        writeln!(
            f,
            "{pad}--> {}:{}:{}",
            self.file.display(),
            self.line,
            self.col
        )?;
        if let Some(src) = &self.snippet {
            let width = token_width(src, self.col);
            let lead: String = src
                .chars()
                .take(self.col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            writeln!(f, "{pad} |")?;
            writeln!(f, "{num} | {src}")?;
            writeln!(f, "{pad} | {lead}{}", "^".repeat(width))?;
        }
        if let Some(e) = &self.expected {
            if !self.message.contains(e.as_str()) {
                writeln!(f, "{pad} = expected: {e}")?;
            }
        }
        if let Some(h) = &self.help {
            writeln!(f, "{pad} = help: {h}")?;
        }
        Ok(())
    }
}

/// How many characters the caret should underline: the YAML token starting at `col`.
fn token_width(line: &str, col: usize) -> usize {
    let rest: Vec<char> = line.chars().skip(col.saturating_sub(1)).collect();
    let Some(&first) = rest.first() else {
        return 1;
    };
    if first == '"' || first == '\'' {
        // A quoted scalar: up to the closing quote (a doubled quote or `\"` does not close it).
        let mut i = 1;
        while i < rest.len() {
            if first == '"' && rest[i] == '\\' {
                i += 2;
                continue;
            }
            if rest[i] == first {
                if first == '\'' && rest.get(i + 1) == Some(&'\'') {
                    i += 2;
                    continue;
                }
                return i + 1;
            }
            i += 1;
        }
        return rest.len();
    }
    let next_is_space = rest.get(1).is_none_or(|c| c.is_whitespace());
    if matches!(first, '[' | '{' | '*' | '&' | '|' | '>') || (first == '-' && next_is_space) {
        return 1;
    }
    let mut end = 0;
    while end < rest.len() {
        let c = rest[end];
        let next = rest.get(end + 1).copied();
        if matches!(c, ',' | ']' | '}')
            || (c == ':' && next.is_none_or(char::is_whitespace))
            || (c == '#' && end > 0 && rest[end - 1].is_whitespace())
        {
            break;
        }
        end += 1;
    }
    while end > 0 && rest[end - 1].is_whitespace() {
        end -= 1;
    }
    end.max(1)
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.render(f)
    }
}

/// All problems found in one pipeline file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            d.render(f)?;
        }
        let n = self.0.len();
        if n > 1 {
            writeln!(f, "\nerror: {n} problems in the pipeline file")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Collects diagnostics for one file, filling in the file name and source line.
pub(crate) struct Sink<'a> {
    file: PathBuf,
    lines: Vec<&'a str>,
    diags: Vec<Diagnostic>,
}

impl<'a> Sink<'a> {
    pub fn new(file: PathBuf, source: &'a str) -> Self {
        Sink {
            file,
            lines: source.lines().collect(),
            diags: Vec::new(),
        }
    }

    /// Records a problem at `mark`; returns it so callers can add `expected`/`help`.
    pub fn error(
        &mut self,
        mark: Mark,
        key_path: impl Into<String>,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        let snippet = mark
            .line
            .checked_sub(1)
            .and_then(|i| self.lines.get(i))
            .map(|l| l.trim_end_matches('\r').to_string());
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            line: mark.line,
            col: mark.col,
            key_path: key_path.into(),
            message: message.into(),
            expected: None,
            help: None,
            snippet,
        });
        self.diags.last_mut().expect("just pushed")
    }

    /// Replaces the help of the last problem recorded.
    pub fn last_help(&mut self, help: impl Into<String>) {
        if let Some(d) = self.diags.last_mut() {
            d.help = Some(help.into());
        }
    }

    pub fn has_errors(&self) -> bool {
        !self.diags.is_empty()
    }

    /// The diagnostics in file order, without repeats (one mistake in a swept stage would otherwise
    /// be reported once per instance).
    pub fn finish(self) -> Diagnostics {
        let mut out: Vec<Diagnostic> = Vec::with_capacity(self.diags.len());
        for d in self.diags {
            let dup = out.iter().any(|o| {
                o.line == d.line
                    && o.col == d.col
                    && o.key_path == d.key_path
                    && o.message == d.message
            });
            if !dup {
                out.push(d);
            }
        }
        out.sort_by_key(|d| (d.line, d.col));
        Diagnostics(out)
    }
}

impl Diagnostic {
    pub fn with_help(&mut self, help: impl Into<String>) -> &mut Self {
        self.help = Some(help.into());
        self
    }
    pub fn with_expected(&mut self, expected: impl Into<String>) -> &mut Self {
        self.expected = Some(expected.into());
        self
    }
}

/// The candidate closest to `name`, if it is close enough to be a likely typo.
pub fn closest<'c>(name: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&name.to_lowercase(), &c.to_lowercase());
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.filter(|(s, _)| *s >= 0.8).map(|(_, c)| c)
}

/// `; did you mean `x`?` for the closest candidate, or nothing.
pub fn suggest<'c>(name: &str, candidates: impl IntoIterator<Item = &'c str>) -> String {
    closest(name, candidates)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

/// Joins names as "`a`, `b` or `c`".
pub fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.len() {
        0 => String::new(),
        1 => quoted[0].clone(),
        n => format!("{} or {}", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_pick_close_names_only() {
        assert_eq!(
            closest("sparsty", ["sparsity", "pattern", "model"]),
            Some("sparsity")
        );
        assert_eq!(closest("prunned", ["pruned", "ppl"]), Some("pruned"));
        assert_eq!(closest("xyz", ["sparsity", "pattern"]), None);
    }

    #[test]
    fn renders_source_line_and_caret() {
        let src = "stages:\n  p:\n    sparsity: 1.5\n";
        let mut sink = Sink::new(PathBuf::from("p.yaml"), src);
        sink.error(
            Mark { line: 3, col: 15 },
            "stages.p.sparsity",
            "expected a number in [0, 1), found `1.5`",
        )
        .with_help("use a fraction");
        let text = sink.finish().to_string();
        let expected = "error: expected a number in [0, 1), found `1.5`\n \
                        --> p.yaml:3:15\n  |\n3 |     sparsity: 1.5\n  |               ^^^\n  \
                        = help: use a fraction\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn caret_spans_quoted_and_key_tokens() {
        assert_eq!(token_width("  a: \"${x}\" # c", 6), 6);
        assert_eq!(token_width("  sparsty: 0.5", 3), 7);
        assert_eq!(token_width("  x: [1, 22]", 10), 2);
        assert_eq!(token_width("  x: -0.1, y", 6), 4);
        assert_eq!(token_width("  - a", 3), 1);
    }
}
