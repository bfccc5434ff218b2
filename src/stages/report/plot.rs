//! Plots of a report: what to draw ([`figure`], pure, from the observations) and drawing it as SVG
//! or PNG with plotters ([`svg()`], [`png()`]).
//!
//! Text is drawn with DejaVu Sans compiled into the binary (the `dejavu` crate, through plotters'
//! `ab_glyph` backend), so PNGs render the same on a machine with no fonts installed.

use std::ops::Range;
use std::sync::OnceLock;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::observe::ReportData;
use super::pivot::{grid, source, Grid, GridRow, Source};
use super::spec::{AxisScale, Change, MetricRef, PlotKind, ReportPlot, ReportTable};
use super::ReportError;
use crate::cache::key::ParamValue;
use crate::table::Cell;

/// One panel's size in pixels.
pub const PANEL_WIDTH: u32 = 520;
pub const PANEL_HEIGHT: u32 = 400;
/// Height of one caption line under the panels.
pub const CAPTION_LINE: u32 = 15;

/// What one plot shows: panels side by side, caption lines under them.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    pub panels: Vec<Panel>,
    pub caption: Vec<String>,
}

impl Figure {
    pub fn size(&self) -> (u32, u32) {
        let n = self.panels.len().max(1) as u32;
        let caption = CAPTION_LINE * self.caption.len() as u32 + 8;
        (PANEL_WIDTH * n, PANEL_HEIGHT + caption)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub baseline: Option<Baseline>,
    pub log_x: bool,
    pub log_y: bool,
}

/// Points of one series, joined by a line in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text; empty for the only series of a plot.
    pub name: String,
    pub points: Vec<(f64, f64, Option<String>)>,
}

/// The dense model in a panel.
#[derive(Clone, Debug, PartialEq)]
pub enum Baseline {
    /// A dashed horizontal line at this y.
    Level(f64),
    /// A marked point.
    Point(f64, f64),
}

fn value_text(v: &Option<ParamValue>) -> String {
    v.as_ref().map_or("—".into(), ToString::to_string)
}

/// Legend text of a row's series: the value alone for one axis, `a=v, b=w` for several.
fn series_name(axes: &[String], key: &[Option<ParamValue>]) -> String {
    match axes.len() {
        0 => String::new(),
        1 => value_text(&key[0]),
        _ => axes
            .iter()
            .zip(key)
            .map(|(a, v)| format!("{a}={}", value_text(v)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn number(v: &Option<ParamValue>) -> Option<f64> {
    match v {
        Some(ParamValue::Int(i)) => Some(*i as f64),
        Some(ParamValue::Float(x)) => Some(*x),
        _ => None,
    }
}

/// Adds `p` to the series named `name`, creating it in order of first appearance. Infinite or
/// NaN values (a diverged model) have no place on an axis: they are left out.
fn push(series: &mut Vec<Series>, name: String, p: (f64, f64, Option<String>)) {
    if !(p.0.is_finite() && p.1.is_finite()) {
        return;
    }
    match series.iter_mut().find(|s| s.name == name) {
        Some(s) => s.points.push(p),
        None => series.push(Series {
            name,
            points: vec![p],
        }),
    }
}

/// How many of `cells` have no value yet.
fn unresolved(rows: &[&GridRow], col: usize) -> usize {
    rows.iter()
        .filter(|r| matches!(r.cells[col], Cell::Pending | Cell::Failed))
        .count()
}

fn not_drawn(r: &MetricRef, n: usize) -> String {
    let s = if n == 1 { "" } else { "s" };
    format!("{r}: {n} point{s} not drawn")
}

/// What `plot` shows of `data`, each metric titled by its reference.
pub fn figure(data: &ReportData, plot: &ReportPlot) -> Result<Figure, ReportError> {
    figure_labelled(data, plot, &[])
}

/// Headers the report's tables give metrics (`{metric: …, label: …}`), first one wins: plots
/// title their axes as the tables head their columns.
pub fn metric_labels(tables: &[ReportTable]) -> Vec<(MetricRef, String)> {
    let mut out: Vec<(MetricRef, String)> = Vec::new();
    for c in tables.iter().flat_map(|t| t.columns.iter().flatten()) {
        if let Some(l) = &c.label {
            if !out.iter().any(|(m, _)| *m == c.value) {
                out.push((c.value.clone(), l.clone()));
            }
        }
    }
    out
}

/// [`figure`], with a metric's axis and panel titles taken from `labels` where it has one.
pub fn figure_labelled(
    data: &ReportData,
    plot: &ReportPlot,
    labels: &[(MetricRef, String)],
) -> Result<Figure, ReportError> {
    let name = |r: &MetricRef| {
        labels
            .iter()
            .find(|(m, _)| m == r)
            .map_or_else(|| r.to_string(), |(_, l)| l.clone())
    };
    let mut notes = Vec::new();
    let panels = match &plot.kind {
        PlotKind::Line { x, y } => line_panels(data, plot, x, y, &name, &mut notes)?,
        PlotKind::Tradeoff {
            x,
            y,
            label,
            change,
        } => tradeoff_panels(data, plot, x, y, label, *change, &name, &mut notes)?,
    };
    let mut caption = data.provenance.lines();
    if let Some(m) = data.provenance.missing_note() {
        notes.insert(0, m);
    }
    if !notes.is_empty() {
        caption.push(notes.join("; "));
    }
    let width = PANEL_WIDTH * panels.len().max(1) as u32;
    let caption = caption.iter().flat_map(|l| wrap(l, width)).collect();
    Ok(Figure { panels, caption })
}

/// Average advance of a caption character, in pixels, with some room (DejaVu Sans at `SMALL`).
const CAPTION_CHAR: u32 = 5;

/// `line` cut into lines that fit `width` pixels: at ` · ` separators where possible, else at
/// spaces; a word longer than a line stays whole.
fn wrap(line: &str, width: u32) -> Vec<String> {
    let max = ((width.saturating_sub(16)) / CAPTION_CHAR).max(20) as usize;
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for part in line.split(" · ") {
        let sep = if cur.is_empty() { "" } else { " · " };
        if cur.chars().count() + sep.chars().count() + part.chars().count() <= max {
            cur.push_str(sep);
            cur.push_str(part);
            continue;
        }
        if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        for word in part.split(' ') {
            if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > max {
                out.push(std::mem::take(&mut cur));
            }
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(word);
        }
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

fn sources(data: &ReportData, refs: &[&MetricRef]) -> Result<Vec<Source>, ReportError> {
    refs.iter().map(|r| source(data, r)).collect()
}

/// Whether an axis asked to be logarithmic can be: every value drawn on it is positive.
fn log_ok(
    scale: AxisScale,
    axis: &str,
    values: impl Iterator<Item = f64>,
    notes: &mut Vec<String>,
) -> bool {
    if scale != AxisScale::Log {
        return false;
    }
    let mut values = values.peekable();
    if values.peek().is_none() {
        return false;
    }
    let positive = values.all(|v| v > 0.0);
    if !positive {
        notes.push(format!("{axis} values ≤ 0: linear scale"));
    }
    positive
}

fn coords(series: &[Series], at: fn(&(f64, f64, Option<String>)) -> f64) -> Vec<f64> {
    series
        .iter()
        .flat_map(|s| s.points.iter().map(at))
        .collect()
}

fn line_panels(
    data: &ReportData,
    plot: &ReportPlot,
    x: &str,
    y: &[MetricRef],
    name: &dyn Fn(&MetricRef) -> String,
    notes: &mut Vec<String>,
) -> Result<Vec<Panel>, ReportError> {
    let refs: Vec<&MetricRef> = y.iter().collect();
    let g: Grid = grid(
        &data.observations,
        &plot.rows,
        &sources(data, &refs)?,
        &plot.filter,
    )?;
    let series_axes = &plot.rows[1..];
    let others: Vec<&GridRow> = g.rows.iter().filter(|r| !r.is_dense()).collect();
    let mut panels = Vec::new();
    for (j, r) in y.iter().enumerate() {
        let mut series: Vec<Series> = Vec::new();
        for row in &others {
            let (Some(xv), Some(yv)) = (number(&row.key[0]), row.cells[j].as_f64()) else {
                continue;
            };
            push(
                &mut series,
                series_name(series_axes, &row.key[1..]),
                (xv, yv, None),
            );
        }
        for s in &mut series {
            s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        let base = g.dense().and_then(|d| d.cells[j].as_f64());
        let xs = coords(&series, |p| p.0);
        let ys = coords(&series, |p| p.1);
        let log_x = log_ok(plot.x_scale, "x", xs.into_iter(), notes);
        let log_y = log_ok(plot.y_scale, "y", ys.into_iter().chain(base), notes);
        panels.push(Panel {
            title: name(r),
            x_label: x.to_string(),
            y_label: name(r),
            series,
            baseline: base.map(Baseline::Level),
            log_x,
            log_y,
        });
        let n = unresolved(&g.rows.iter().collect::<Vec<_>>(), j);
        if n > 0 {
            notes.push(not_drawn(r, n));
        }
    }
    Ok(panels)
}

#[allow(clippy::too_many_arguments)]
fn tradeoff_panels(
    data: &ReportData,
    plot: &ReportPlot,
    x: &MetricRef,
    y: &[MetricRef],
    label: &[String],
    change: Change,
    name: &dyn Fn(&MetricRef) -> String,
    notes: &mut Vec<String>,
) -> Result<Vec<Panel>, ReportError> {
    let mut refs: Vec<&MetricRef> = vec![x];
    refs.extend(y.iter());
    let g = grid(
        &data.observations,
        &plot.rows,
        &sources(data, &refs)?,
        &plot.filter,
    )?;
    let pos = |a: &String| plot.rows.iter().position(|r| r == a);
    let series_idx: Vec<usize> = plot.series.iter().filter_map(pos).collect();
    let label_idx: Vec<usize> = label.iter().filter_map(pos).collect();
    let dense = g.dense();
    if change != Change::None && dense.is_none() {
        return Err(ReportError::NoBaseline {
            plot: plot.name.clone(),
        });
    }
    let apply = |v: f64, base: Option<f64>| -> Option<f64> {
        match change {
            Change::None => Some(v),
            Change::Diff => base.map(|b| v - b),
            Change::Ratio => base.filter(|b| *b != 0.0).map(|b| v / b),
        }
    };
    let describe = |r: &MetricRef| match change {
        Change::None => name(r),
        Change::Diff => format!("{} − dense", name(r)),
        Change::Ratio => format!("{} ÷ dense", name(r)),
    };
    let dense_x = dense.and_then(|d| d.cells[0].as_f64());
    let mut panels = Vec::new();
    for (j, r) in y.iter().enumerate() {
        let col = j + 1;
        let dense_y = dense.and_then(|d| d.cells[col].as_f64());
        let mut series: Vec<Series> = Vec::new();
        for row in g.rows.iter().filter(|r| !r.is_dense()) {
            let (Some(xv), Some(yv)) = (row.cells[0].as_f64(), row.cells[col].as_f64()) else {
                continue;
            };
            let (Some(xv), Some(yv)) = (apply(xv, dense_x), apply(yv, dense_y)) else {
                continue;
            };
            let keys: Vec<Option<ParamValue>> =
                series_idx.iter().map(|&i| row.key[i].clone()).collect();
            let axes: Vec<String> = series_idx.iter().map(|&i| plot.rows[i].clone()).collect();
            let text: Vec<String> = label_idx.iter().map(|&i| value_text(&row.key[i])).collect();
            let text = (!text.is_empty()).then(|| text.join(","));
            let series_of = match &row.model {
                Some(m) => m.clone(),
                None => series_name(&axes, &keys),
            };
            push(&mut series, series_of, (xv, yv, text));
        }
        let base = match (dense_x, dense_y) {
            (Some(bx), Some(by)) => apply(bx, dense_x)
                .zip(apply(by, dense_y))
                .map(|(a, b)| Baseline::Point(a, b)),
            _ => None,
        };
        let (base_x, base_y) = match base {
            Some(Baseline::Point(x, y)) => (Some(x), Some(y)),
            _ => (None, None),
        };
        let xs = coords(&series, |p| p.0);
        let ys = coords(&series, |p| p.1);
        let log_x = log_ok(plot.x_scale, "x", xs.into_iter().chain(base_x), notes);
        let log_y = log_ok(plot.y_scale, "y", ys.into_iter().chain(base_y), notes);
        panels.push(Panel {
            title: format!("{} vs {}", name(r), name(x)),
            x_label: describe(x),
            y_label: describe(r),
            series,
            baseline: base,
            log_x,
            log_y,
        });
        let rows: Vec<&GridRow> = g.rows.iter().collect();
        let n = unresolved(&rows, 0).max(unresolved(&rows, col));
        if n > 0 {
            notes.push(not_drawn(r, n));
        }
    }
    Ok(panels)
}

// ---- Drawing ----

const FONT: &str = "sans-serif";
// Even sizes only: plotters' ab_glyph backend places each glyph at size/2 + its top, truncated,
// so at odd sizes glyphs that reach less high (a period) sit a pixel above the others.
const SMALL: u32 = 10;
const NORMAL: u32 = 12;
const LARGE: u32 = 14;
const TITLE: u32 = 16;

/// Tableau's ten colours: distinct, and legible in greyscale print.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Registers the embedded font once; plotters looks fonts up by family name. Anything else in the
/// process that draws with plotters (criterion's HTML reports) needs it too: with plotters'
/// `ab_glyph` text there are no system fonts to fall back on.
pub fn register_font() -> Result<(), ReportError> {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Draw("the embedded font did not load".into()))
    }
}

/// Tick labels: four significant digits, no trailing zeros.
fn tick(v: &f64) -> String {
    let s = crate::table::format_num(*v);
    if s.contains('.') && !s.contains('e') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn padded(lo: f64, hi: f64, log: bool) -> Range<f64> {
    if log {
        let (l, h) = (lo.ln(), hi.ln());
        let pad = if h > l { (h - l) * 0.08 } else { 0.5 };
        return (l - pad).exp()..(h + pad).exp();
    }
    let pad = if hi > lo {
        (hi - lo) * 0.08
    } else {
        lo.abs().max(1.0) * 0.1
    };
    (lo - pad)..(hi + pad)
}

fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

fn ranges(p: &Panel) -> (Range<f64>, Range<f64>) {
    let pts = || p.series.iter().flat_map(|s| s.points.iter());
    let (bx, by) = match p.baseline {
        Some(Baseline::Point(x, y)) => (Some(x), Some(y)),
        Some(Baseline::Level(y)) => (None, Some(y)),
        None => (None, None),
    };
    let (xl, xh) = extent(pts().map(|q| q.0).chain(bx)).unwrap_or((0.0, 1.0));
    let (yl, yh) = extent(pts().map(|q| q.1).chain(by)).unwrap_or((0.0, 1.0));
    (padded(xl, xh, p.log_x), padded(yl, yh, p.log_y))
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_figure<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &Figure) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(PANEL_HEIGHT);
    let areas = top.split_evenly((1, fig.panels.len().max(1)));
    for (area, p) in areas.iter().zip(&fig.panels) {
        draw_panel(area, p)?;
    }
    let style = TextStyle::from((FONT, SMALL).into_font()).color(&RGBColor(90, 90, 90));
    for (i, line) in fig.caption.iter().enumerate() {
        bottom.draw_text(line, &style, (8, 4 + (CAPTION_LINE as i32) * i as i32))?;
    }
    root.present()
}

/// How a legend entry is drawn.
#[derive(Clone, Copy)]
enum Swatch {
    Dashed,
    Cross,
    Color(RGBColor),
}

/// A panel's legend entries, in drawing order.
fn legend(p: &Panel) -> Vec<(String, Swatch)> {
    let mut out = Vec::new();
    match p.baseline {
        Some(Baseline::Level(_)) => out.push(("dense".to_string(), Swatch::Dashed)),
        Some(Baseline::Point(..)) => out.push(("dense".to_string(), Swatch::Cross)),
        None => {}
    }
    for (i, s) in p.series.iter().enumerate() {
        if !s.name.is_empty() {
            out.push((s.name.clone(), Swatch::Color(COLORS[i % COLORS.len()])));
        }
    }
    out
}

const SWATCH: i32 = 18;
const LEGEND_PAD: i32 = 6;
const LEGEND_ROW: i32 = 18;
/// Top of the legend in its strip: level with the top of the data area (margin and title).
const LEGEND_TOP: i32 = 40;

/// Width of the strip right of the data area that holds the legend (0: no legend), so that no
/// point or line is ever covered; at most half the panel.
fn legend_width<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, Swatch)],
) -> u32 {
    if entries.is_empty() {
        return 0;
    }
    let font = TextStyle::from((FONT, NORMAL).into_font());
    let text = entries
        .iter()
        .map(|(t, _)| {
            area.estimate_text_size(t, &font)
                .map_or(8 * t.len() as u32, |d| d.0)
        })
        .max()
        .unwrap_or(0);
    let w = text as i32 + SWATCH + 4 * LEGEND_PAD;
    (w.max(0) as u32).min(area.dim_in_pixel().0 / 2)
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, Swatch)],
) -> DrawResult<DB> {
    let (w, _) = area.dim_in_pixel();
    let h = LEGEND_ROW * entries.len() as i32 + LEGEND_PAD;
    let (x0, y0) = (0, LEGEND_TOP);
    let x1 = w as i32 - LEGEND_PAD;
    area.draw(&Rectangle::new([(x0, y0), (x1, y0 + h)], BLACK.mix(0.3)))?;
    let font =
        TextStyle::from((FONT, NORMAL).into_font()).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Left,
            plotters::style::text_anchor::VPos::Center,
        ));
    for (i, (name, swatch)) in entries.iter().enumerate() {
        let y = y0 + LEGEND_PAD / 2 + LEGEND_ROW * i as i32 + LEGEND_ROW / 2;
        let x = x0 + LEGEND_PAD;
        match *swatch {
            Swatch::Dashed => area.draw(&DashedPathElement::new(
                vec![(x, y), (x + SWATCH, y)],
                4,
                3,
                BLACK.stroke_width(1),
            ))?,
            Swatch::Cross => {
                area.draw(&Cross::new((x + SWATCH / 2, y), 5, BLACK.stroke_width(2)))?
            }
            Swatch::Color(c) => {
                area.draw(&PathElement::new(
                    vec![(x, y), (x + SWATCH, y)],
                    c.stroke_width(2),
                ))?;
                area.draw(&Circle::new((x + SWATCH / 2, y), 3, c.filled()))?;
            }
        }
        area.draw(&Text::new(
            name.clone(),
            (x + SWATCH + LEGEND_PAD, y),
            font.clone(),
        ))?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel) -> DrawResult<DB> {
    let entries = legend(p);
    let lw = legend_width(area, &entries);
    let (chart_area, legend_area) = area.split_horizontally(area.dim_in_pixel().0 - lw);
    if lw > 0 {
        draw_legend(&legend_area, &entries)?;
    }
    let area = &chart_area;
    let (xr, yr) = ranges(p);
    let mut b = ChartBuilder::on(area);
    b.caption(&p.title, (FONT, TITLE))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64);
    // Each combination of scales is its own coordinate type.
    match (p.log_x, p.log_y) {
        (false, false) => draw_body(b.build_cartesian_2d(xr.clone(), yr)?, p, xr),
        (false, true) => draw_body(b.build_cartesian_2d(xr.clone(), yr.log_scale())?, p, xr),
        (true, false) => draw_body(b.build_cartesian_2d(xr.clone().log_scale(), yr)?, p, xr),
        (true, true) => draw_body(
            b.build_cartesian_2d(xr.clone().log_scale(), yr.log_scale())?,
            p,
            xr,
        ),
    }
}

fn draw_body<'a, DB, X, Y>(
    mut chart: ChartContext<'a, DB, Cartesian2d<X, Y>>,
    p: &Panel,
    xr: Range<f64>,
) -> DrawResult<DB>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(&p.x_label)
        .y_desc(&p.y_label)
        .label_style((FONT, NORMAL))
        .axis_desc_style((FONT, LARGE))
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    // The legend is drawn beside the data area (see `draw_legend`), never on it.
    match p.baseline {
        Some(Baseline::Level(y)) => {
            let style = BLACK.stroke_width(1);
            chart.draw_series(DashedLineSeries::new(
                vec![(xr.start, y), (xr.end, y)],
                6,
                4,
                style,
            ))?;
        }
        Some(Baseline::Point(x, y)) => {
            let style = BLACK.stroke_width(2);
            chart.draw_series(std::iter::once(Cross::new((x, y), 6, style)))?;
            chart.draw_series(std::iter::once(
                EmptyElement::at((x, y))
                    + Text::new("dense".to_string(), (7, -14), (FONT, SMALL).into_font()),
            ))?;
        }
        None => {}
    }
    for (i, s) in p.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart.draw_series(LineSeries::new(
            s.points.iter().map(|q| (q.0, q.1)),
            color.stroke_width(2),
        ))?;
        chart.draw_series(
            s.points
                .iter()
                .map(|q| Circle::new((q.0, q.1), 3, color.filled())),
        )?;
        let labels = s
            .points
            .iter()
            .filter_map(|q| q.2.clone().map(|t| (q.0, q.1, t)));
        chart.draw_series(labels.map(|(x, y, t)| {
            EmptyElement::at((x, y))
                + Text::new(t, (5, -14), (FONT, SMALL).into_font().color(&color))
        }))?;
    }
    Ok(())
}

fn draw_error<E: std::fmt::Debug>(e: E) -> ReportError {
    ReportError::Draw(format!("{e:?}"))
}

/// The figure as an SVG document.
pub fn svg(fig: &Figure) -> Result<String, ReportError> {
    register_font()?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, fig.size()).into_drawing_area();
        draw_figure(&root, fig).map_err(draw_error)?;
    }
    Ok(out)
}

/// The figure as a PNG file (8-bit RGB).
pub fn png(fig: &Figure) -> Result<Vec<u8>, ReportError> {
    register_font()?;
    let (w, h) = fig.size();
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw_figure(&root, fig).map_err(draw_error)?;
    }
    let mut out = Vec::new();
    {
        let mut enc = ::png::Encoder::new(&mut out, w, h);
        enc.set_color(::png::ColorType::Rgb);
        enc.set_depth(::png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(draw_error)?;
        writer.write_image_data(&rgb).map_err(draw_error)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_wrap_at_separators_then_spaces() {
        // 136 px: (136 - 16) / 5 = 24 characters a line.
        assert_eq!(wrap("short · line", 136), ["short · line"]);
        assert_eq!(
            wrap("pipeline p.yaml 1234 · whittle 0.1.0 · seqlen 256", 136),
            ["pipeline p.yaml 1234", "whittle 0.1.0", "seqlen 256"]
        );
        assert_eq!(
            wrap("a-very-long-unbreakable-word-indeed x", 136),
            ["a-very-long-unbreakable-word-indeed", "x"]
        );
        assert_eq!(wrap("", 136), [""]);
    }

    #[test]
    fn ticks_drop_trailing_zeros() {
        assert_eq!(tick(&0.25), "0.25");
        assert_eq!(tick(&900.0), "900");
        assert_eq!(tick(&1000.0), "1000");
        assert_eq!(tick(&0.0), "0");
        assert_eq!(tick(&2.5e7), "2.500e7");
    }

    #[test]
    fn ranges_pad_and_log_ranges_stay_positive() {
        assert_eq!(padded(0.0, 10.0, false), -0.8..10.8);
        // One value: a band around it.
        assert_eq!(padded(5.0, 5.0, false), 4.5..5.5);
        let r = padded(10.0, 1000.0, true);
        assert!(r.start > 0.0 && r.start < 10.0 && r.end > 1000.0, "{r:?}");
    }

    #[test]
    fn figures_widen_with_panels_and_caption_lines() {
        let panel = Panel {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            series: Vec::new(),
            baseline: None,
            log_x: false,
            log_y: false,
        };
        let fig = Figure {
            panels: vec![panel.clone(), panel.clone(), panel],
            caption: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            fig.size(),
            (3 * PANEL_WIDTH, PANEL_HEIGHT + 2 * CAPTION_LINE + 8)
        );
    }
}
