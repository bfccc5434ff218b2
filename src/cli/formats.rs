//! The output formats the commands accept, as clap values. The library's format enums know
//! nothing of clap; the names and help lines a user types and reads are spelled here.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use whittle::plan::{Format, StatusFormat};
use whittle::show::ShowFormat;

/// `plan --format`.
pub fn plan() -> impl TypedValueParser<Value = Format> {
    one_of(&[
        ("text", Format::Text, None),
        ("json", Format::Json, None),
        ("dot", Format::Dot, None),
        ("mermaid", Format::Mermaid, None),
    ])
}

/// `status --format`.
pub fn status() -> impl TypedValueParser<Value = StatusFormat> {
    one_of(&[
        ("text", StatusFormat::Text, None),
        ("json", StatusFormat::Json, None),
    ])
}

/// `show --format`.
pub fn show() -> impl TypedValueParser<Value = ShowFormat> {
    one_of(&[
        (
            "table",
            ShowFormat::Table,
            Some("Aligned columns for the terminal"),
        ),
        ("csv", ShowFormat::Csv, None),
        (
            "json",
            ShowFormat::Json,
            Some(
                "An array of objects, one per instance; `null` where a value is missing or pending",
            ),
        ),
    ])
}

type Choice<T> = (&'static str, T, Option<&'static str>);

/// A parser accepting exactly these names, listing them (with their help) in `--help`.
fn one_of<T: Copy + Send + Sync + 'static>(
    choices: &'static [Choice<T>],
) -> impl TypedValueParser<Value = T> {
    let values = choices.iter().map(|&(name, _, help)| {
        let value = PossibleValue::new(name);
        match help {
            Some(h) => value.help(h),
            None => value,
        }
    });
    PossibleValuesParser::new(values).map(move |name| {
        choices
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|&(_, value, _)| value)
            .expect("clap accepts only the names listed")
    })
}
