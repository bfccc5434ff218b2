//! A results table and its renderings: aligned text for the terminal, CSV, Markdown, LaTeX and
//! JSON Lines.

use serde_json::{Map, Value};

/// One cell: a number, a string, or why there is none.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// Nothing to show: the row's model was not measured this way, or the metric was not recorded.
    Missing,
    /// The measurement is not in the cache yet.
    Pending,
    /// The measurement (or a stage it needs) failed in the latest run.
    Failed,
    Text(String),
    Int(i64),
    /// A measured value: shown with four significant digits.
    Num(f64),
    /// A given value (a sweep setting): shown exactly as written.
    Exact(f64),
}

impl Cell {
    fn display(&self) -> String {
        match self {
            Cell::Missing => "—".to_string(),
            Cell::Pending => "pending".to_string(),
            Cell::Failed => "failed".to_string(),
            Cell::Text(s) => s.clone(),
            Cell::Int(i) => i.to_string(),
            Cell::Num(x) => format_num(*x),
            Cell::Exact(x) => crate::cache::key::canonical_float(*x),
        }
    }

    fn csv(&self) -> String {
        match self {
            Cell::Missing => String::new(),
            // Spelled out, never blank: a reader must not mistake them for "not applicable".
            Cell::Pending | Cell::Failed => self.display(),
            Cell::Text(s) => csv_quote(s),
            Cell::Int(i) => i.to_string(),
            // Full precision in machine-readable output.
            Cell::Num(x) | Cell::Exact(x) => format!("{x}"),
        }
    }

    fn json(&self) -> Value {
        match self {
            Cell::Missing | Cell::Pending | Cell::Failed => Value::Null,
            Cell::Text(s) => Value::String(s.clone()),
            Cell::Int(i) => Value::from(*i),
            Cell::Num(x) | Cell::Exact(x) => {
                serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number)
            }
        }
    }

    fn latex(&self) -> String {
        match self {
            Cell::Missing => "--".to_string(),
            Cell::Pending | Cell::Failed => format!("\\textit{{{}}}", self.display()),
            Cell::Text(s) => latex_escape(s),
            _ => self.display(),
        }
    }

    fn is_numeric(&self) -> bool {
        matches!(self, Cell::Int(_) | Cell::Num(_) | Cell::Exact(_))
    }

    /// The value as a number, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Cell::Int(i) => Some(*i as f64),
            Cell::Num(x) | Cell::Exact(x) => Some(*x),
            _ => None,
        }
    }
}

/// Text safe in LaTeX's text mode: its ten special characters, and the ASCII ones that the
/// default font encoding draws as other glyphs.
pub fn latex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '<' => out.push_str("\\textless{}"),
            '>' => out.push_str("\\textgreater{}"),
            '|' => out.push_str("\\textbar{}"),
            '—' => out.push_str("---"),
            _ => out.push(c),
        }
    }
    out
}

/// Four significant digits, switching to scientific notation for very large or small values.
pub fn format_num(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        return format!("{x:.3e}");
    }
    let digits = if a == 0.0 {
        0
    } else {
        (3 - a.log10().floor() as i32).max(0) as usize
    };
    format!("{x:.digits$}")
}

fn csv_quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(columns: Vec<String>) -> Self {
        Table {
            columns,
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    /// Aligned columns for a terminal; numbers right-aligned.
    pub fn to_text(&self) -> String {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(Cell::display).collect())
            .collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|c| {
                cells
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain([self.columns[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let numeric: Vec<bool> = (0..self.columns.len())
            .map(|c| self.rows.iter().any(|r| r[c].is_numeric()))
            .collect();
        let line = |items: &[String]| -> String {
            let mut out = String::new();
            for (c, item) in items.iter().enumerate() {
                if c > 0 {
                    out.push_str("  ");
                }
                let pad = widths[c] - item.chars().count();
                if numeric[c] {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(item);
                } else {
                    out.push_str(item);
                    out.push_str(&" ".repeat(pad));
                }
            }
            out.trim_end().to_string()
        };
        let mut out = line(&self.columns);
        out.push('\n');
        let rule: Vec<String> = widths.iter().map(|w| "─".repeat(*w)).collect();
        out.push_str(&line(&rule));
        out.push('\n');
        for r in &cells {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }

    pub fn to_csv(&self) -> String {
        let mut out = self
            .columns
            .iter()
            .map(|c| csv_quote(c))
            .collect::<Vec<_>>()
            .join(",");
        out.push('\n');
        for r in &self.rows {
            out.push_str(&r.iter().map(Cell::csv).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        out
    }

    pub fn to_markdown(&self) -> String {
        let esc = |s: String| s.replace('|', "\\|");
        let mut out = format!(
            "| {} |\n",
            self.columns
                .iter()
                .map(|c| esc(c.clone()))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let numeric: Vec<bool> = (0..self.columns.len())
            .map(|c| self.rows.iter().any(|r| r[c].is_numeric()))
            .collect();
        out.push_str(&format!(
            "|{}|\n",
            numeric
                .iter()
                .map(|n| if *n { "---:" } else { "---" })
                .collect::<Vec<_>>()
                .join("|")
        ));
        for r in &self.rows {
            out.push_str(&format!(
                "| {} |\n",
                r.iter()
                    .map(|c| esc(c.display()))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
        out
    }

    /// A booktabs `tabular`: text columns left-aligned, numeric ones right-aligned.
    pub fn to_latex(&self) -> String {
        let numeric = self.numeric_columns();
        let spec: String = numeric.iter().map(|n| if *n { 'r' } else { 'l' }).collect();
        let row = |cells: Vec<String>| format!("{} \\\\\n", cells.join(" & "));
        let mut out = format!("\\begin{{tabular}}{{{spec}}}\n\\toprule\n");
        out.push_str(&row(self.columns.iter().map(|c| latex_escape(c)).collect()));
        out.push_str("\\midrule\n");
        for r in &self.rows {
            out.push_str(&row(r.iter().map(Cell::latex).collect()));
        }
        out.push_str("\\bottomrule\n\\end{tabular}\n");
        out
    }

    fn numeric_columns(&self) -> Vec<bool> {
        (0..self.columns.len())
            .map(|c| self.rows.iter().any(|r| r[c].is_numeric()))
            .collect()
    }

    /// One JSON object per row; missing cells are `null`.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for r in &self.rows {
            let obj: Map<String, Value> = self
                .columns
                .iter()
                .cloned()
                .zip(r.iter().map(Cell::json))
                .collect();
            out.push_str(&Value::Object(obj).to_string());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(vec!["method".into(), "sparsity".into(), "ppl".into()]);
        t.push(vec![
            Cell::Text("dense".into()),
            Cell::Missing,
            Cell::Num(12.3456),
        ]);
        t.push(vec![
            Cell::Text("wanda, v2".into()),
            Cell::Num(0.5),
            Cell::Num(1234.5678),
        ]);
        t
    }

    #[test]
    fn numbers_have_four_significant_digits() {
        assert_eq!(format_num(12.3456), "12.35");
        assert_eq!(format_num(1234.5678), "1235");
        assert_eq!(format_num(0.5), "0.5000");
        assert_eq!(format_num(0.0), "0");
        assert_eq!(format_num(2.5e7), "2.500e7");
    }

    #[test]
    fn csv_quotes_and_leaves_missing_empty() {
        assert_eq!(
            sample().to_csv(),
            "method,sparsity,ppl\ndense,,12.3456\n\"wanda, v2\",0.5,1234.5678\n"
        );
    }

    #[test]
    fn markdown_right_aligns_numbers() {
        let md = sample().to_markdown();
        assert!(
            md.starts_with("| method | sparsity | ppl |\n|---|---:|---:|\n"),
            "{md}"
        );
        assert!(md.contains("| dense | — | 12.35 |"), "{md}");
    }

    #[test]
    fn jsonl_uses_null_for_missing() {
        let first = sample().to_jsonl().lines().next().unwrap().to_string();
        assert_eq!(first, r#"{"method":"dense","sparsity":null,"ppl":12.3456}"#);
    }

    #[test]
    fn text_aligns_columns() {
        let text = sample().to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "method     sparsity    ppl");
        assert_eq!(lines[2], "dense             —  12.35");
        assert_eq!(lines[3], "wanda, v2    0.5000   1235");
    }
}
