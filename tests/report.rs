//! Reports: pivoting hand-made observations, exact renderings (Markdown, CSV, LaTeX), plots that
//! decode, the `tables:` / `plots:` diagnostics, and a small sweep on stories260K run and then
//! re-rendered with `whittle report`.

mod common;

use std::path::{Path, PathBuf};

use whittle::cache::{Cache, Lookup, ParamValue, RunRecord, StageStatus};
use whittle::stages::report::observe::Group;
use whittle::stages::report::pivot::{columns, pivot, Source};
use whittle::stages::report::plot::{figure, png, svg, Baseline, PANEL_HEIGHT, PANEL_WIDTH};
use whittle::stages::report::provenance::{DatasetId, ModelId, PipelineId, Points, Provenance};
use whittle::stages::report::{
    render, Cell, Measurement, Observation, Outcome, ReportData, ReportError,
};
use whittle::stages::report::{
    AxisScale, Change, MetricRef, PlotFormat, PlotKind, ReportColumn, ReportFormat, ReportPlot,
    ReportSpec, ReportTable,
};
use whittle::stages::StageSpec;

// ---- Hand-made observations ----

fn point(axes: &[(&str, ParamValue)]) -> whittle::pipeline::spec::Point {
    axes.iter()
        .map(|(a, v)| (a.to_string(), v.clone()))
        .collect()
}

fn measured(metrics: &[(&str, f64)], bytes: Option<u64>) -> Outcome {
    Outcome::Measured(Measurement {
        metrics: metrics
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect(),
        model_bytes: bytes,
        seqlen: Some(64),
        device: Some("cpu".into()),
        ..Measurement::default()
    })
}

fn obs(stage: &str, group: &str, axes: &[(&str, ParamValue)], outcome: Outcome) -> Observation {
    Observation {
        stage: stage.into(),
        group: group.into(),
        point: point(axes),
        label: format!("{stage}{axes:?}"),
        compressed: (!axes.is_empty()).then(|| format!("{stage}{axes:?}")),
        outcome,
    }
}

fn s(v: &str) -> ParamValue {
    ParamValue::Str(v.into())
}

fn f(v: f64) -> ParamValue {
    ParamValue::Float(v)
}

fn provenance(pending: usize, failed: usize, total: usize) -> Provenance {
    Provenance {
        schema: 1,
        pipeline: PipelineId {
            name: "demo".into(),
            file: "demo.yaml".into(),
            blake3: "ab".repeat(32),
        },
        engine_version: whittle::ENGINE_VERSION.into(),
        models: vec![ModelId {
            name: "tiny".into(),
            weights: Some("cd".repeat(32)),
            tokenizer_semantics: "tokenizers".into(),
        }],
        datasets: vec![DatasetId {
            name: "wiki".into(),
            blake3: "ef".repeat(32),
        }],
        seqlen: vec![64],
        devices: vec!["cpu".into()],
        accumulation: Vec::new(),
        points: Points {
            total,
            pending,
            failed,
        },
    }
}

/// A sweep of method × sparsity, two evaluations (ppl, wiki) and their dense baselines, with the
/// dense rows listed after some sweep rows, one point pending and one failed.
fn sample() -> ReportData {
    let (m, sp) = ("method", "sparsity");
    let observations = vec![
        obs(
            "ppl",
            "ppl",
            &[(m, s("wanda")), (sp, f(0.5))],
            measured(
                &[("ppl", 20.0), ("nll", 3.0), ("tokens", 100.0)],
                Some(2_000_000),
            ),
        ),
        obs(
            "ppl",
            "ppl",
            &[(m, s("magnitude")), (sp, f(0.5))],
            Outcome::Pending,
        ),
        obs(
            "ppl-dense",
            "ppl",
            &[],
            measured(&[("ppl", 10.0), ("nll", 2.3)], Some(4_000_000)),
        ),
        obs(
            "ppl",
            "ppl",
            &[(m, s("wanda")), (sp, f(0.7))],
            measured(&[("ppl", 50.0), ("nll", 3.9)], Some(1_500_000)),
        ),
        obs(
            "wiki",
            "wiki",
            &[(m, s("wanda")), (sp, f(0.5))],
            Outcome::Failed,
        ),
        obs(
            "wiki",
            "wiki",
            &[(m, s("magnitude")), (sp, f(0.5))],
            measured(&[("ppl", 300.0)], None),
        ),
        obs("wiki-dense", "wiki", &[], measured(&[("ppl", 90.0)], None)),
    ];
    ReportData {
        title: "demo/table".into(),
        axes: vec![m.into(), sp.into()],
        observations,
        groups: vec![
            Group {
                name: "ppl".into(),
                stages: vec!["ppl-dense".into(), "ppl".into()],
            },
            Group {
                name: "wiki".into(),
                stages: vec!["wiki-dense".into(), "wiki".into()],
            },
        ],
        provenance: provenance(1, 1, 7),
    }
}

fn metric(r: &str) -> MetricRef {
    MetricRef::parse(r).unwrap()
}

fn col(r: &str, label: Option<&str>) -> ReportColumn {
    ReportColumn {
        value: metric(r),
        label: label.map(str::to_string),
    }
}

fn rows() -> Vec<String> {
    vec!["method".into(), "sparsity".into()]
}

fn main_table(data: &ReportData, cols: &[ReportColumn]) -> whittle::stages::report::Table {
    let c = columns(data, Some(cols)).unwrap();
    pivot(data, &rows(), &c, &Vec::new()).unwrap()
}

#[test]
fn pivot_puts_dense_first_then_sweep_order_and_shows_missing_points() {
    let data = sample();
    let t = main_table(&data, &[col("ppl.ppl", None), col("wiki.ppl", None)]);
    assert_eq!(t.columns, ["method", "sparsity", "ppl.ppl", "wiki.ppl"]);
    let expected = vec![
        vec![
            Cell::Text("dense".into()),
            Cell::Missing,
            Cell::Num(10.0),
            Cell::Num(90.0),
        ],
        vec![
            Cell::Text("wanda".into()),
            Cell::Exact(0.5),
            Cell::Num(20.0),
            Cell::Failed,
        ],
        vec![
            Cell::Text("magnitude".into()),
            Cell::Exact(0.5),
            Cell::Pending,
            Cell::Num(300.0),
        ],
        // No wiki evaluation of this model at all: not measured, not pending.
        vec![
            Cell::Text("wanda".into()),
            Cell::Exact(0.7),
            Cell::Num(50.0),
            Cell::Missing,
        ],
    ];
    assert_eq!(t.rows, expected);
}

#[test]
fn csv_markdown_and_text_render_exactly() {
    let data = sample();
    let t = main_table(
        &data,
        &[col("ppl.ppl", None), col("wiki.ppl", Some("WikiText ppl"))],
    );
    assert_eq!(
        t.to_csv(),
        "method,sparsity,ppl.ppl,WikiText ppl\n\
         dense,,10,90\n\
         wanda,0.5,20,failed\n\
         magnitude,0.5,pending,300\n\
         wanda,0.7,50,\n"
    );
    assert_eq!(
        t.to_markdown(),
        "| method | sparsity | ppl.ppl | WikiText ppl |\n\
         |---|---:|---:|---:|\n\
         | dense | — | 10.00 | 90.00 |\n\
         | wanda | 0.5 | 20.00 | failed |\n\
         | magnitude | 0.5 | pending | 300.0 |\n\
         | wanda | 0.7 | 50.00 | — |\n"
    );
    let text = t.to_text();
    assert_eq!(
        text.lines().nth(4),
        Some("magnitude       0.5  pending         300.0")
    );
}

#[test]
fn latex_escapes_and_aligns() {
    let mut data = sample();
    // A text value and headers with LaTeX's special characters.
    for i in [0, 4] {
        data.observations[i]
            .point
            .insert("method".into(), s("wanda_v2 & co"));
    }
    let t = main_table(
        &data,
        &[
            col("ppl.ppl", Some("ppl_tiny (50% & up)")),
            col("wiki.ppl", Some("#1 $x$ {a} ~^\\")),
        ],
    );
    assert_eq!(
        t.to_latex(),
        "\\begin{tabular}{lrrr}\n\
         \\toprule\n\
         method & sparsity & ppl\\_tiny (50\\% \\& up) & \\#1 \\$x\\$ \\{a\\} \
         \\textasciitilde{}\\textasciicircum{}\\textbackslash{} \\\\\n\
         \\midrule\n\
         dense & -- & 10.00 & 90.00 \\\\\n\
         wanda\\_v2 \\& co & 0.5 & 20.00 & \\textit{failed} \\\\\n\
         magnitude & 0.5 & \\textit{pending} & 300.0 \\\\\n\
         wanda & 0.7 & 50.00 & -- \\\\\n\
         \\bottomrule\n\
         \\end{tabular}\n"
    );
}

#[test]
fn default_columns_are_size_then_every_metric_but_protocol_settings() {
    let mut data = sample();
    // A group with no result yet still gets a column, showing its status.
    data.groups.push(Group {
        name: "lama".into(),
        stages: vec!["lama".into()],
    });
    data.observations.push(obs(
        "lama",
        "lama",
        &[("method", s("wanda")), ("sparsity", f(0.5))],
        Outcome::Pending,
    ));
    let c = columns(&data, None).unwrap();
    let headers: Vec<&str> = c.iter().map(|c| c.header.as_str()).collect();
    assert_eq!(
        headers,
        [
            "model_mb",
            "compression",
            "ppl.ppl",
            "ppl.nll",
            "wiki.ppl",
            "lama"
        ]
    );
    assert_eq!(
        c[5].source,
        Source::Status {
            group: "lama".into()
        }
    );
    let t = pivot(&data, &rows(), &c, &Vec::new()).unwrap();
    // Size from the evaluation that recorded it; the pending row's size is pending too.
    assert_eq!(t.rows[0][2], Cell::Num(4.0));
    assert_eq!(t.rows[1][2], Cell::Num(2.0));
    assert_eq!(t.rows[1][7], Cell::Pending);
    assert_eq!(t.rows[2][2], Cell::Pending);
}

#[test]
fn where_keeps_matching_points_and_the_dense_row() {
    let data = sample();
    let c = columns(&data, Some(&[col("ppl.ppl", None)])).unwrap();
    let t = pivot(&data, &rows(), &c, &vec![("sparsity".into(), vec![f(0.7)])]).unwrap();
    let first: Vec<&Cell> = t.rows.iter().map(|r| &r[0]).collect();
    assert_eq!(
        first,
        [&Cell::Text("dense".into()), &Cell::Text("wanda".into())]
    );
}

#[test]
fn two_values_for_one_cell_are_an_error_not_a_silent_pick() {
    let data = sample();
    let c = columns(&data, Some(&[col("ppl.ppl", None)])).unwrap();
    // Rows by method alone: wanda 0.5 and wanda 0.7 collide.
    let e = pivot(&data, &["method".to_string()], &c, &Vec::new()).unwrap_err();
    assert!(
        matches!(&e, ReportError::Ambiguous { row, .. } if row == "method=wanda"),
        "{e}"
    );
}

fn spec(formats: Vec<ReportFormat>, plots: Vec<ReportPlot>) -> ReportSpec {
    ReportSpec {
        inputs: Vec::new(),
        formats,
        tables: vec![ReportTable {
            name: "main".into(),
            rows: rows(),
            columns: Some(vec![col("ppl.ppl", None), col("wiki.ppl", None)]),
            filter: Vec::new(),
        }],
        plots,
    }
}

#[test]
fn every_format_carries_provenance_and_the_missing_count() {
    let data = sample();
    let r = render(&data, &spec(ReportFormat::ALL.to_vec(), Vec::new())).unwrap();
    let names: Vec<&str> = r.files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "main.csv",
            "main.md",
            "main.tex",
            "report.jsonl",
            "provenance.json",
            "report.txt"
        ]
    );
    let text = |n: &str| String::from_utf8(r.file(n).unwrap().to_vec()).unwrap();
    let md = text("main.md");
    let footer = format!(
        "\n*Provenance:* pipeline demo.yaml `abababababab` · whittle {} · model tiny \
         `cdcdcdcdcdcd` (tokenizers semantics) · data wiki `efefefefefef` · seqlen 64 · device cpu. \
         **2 of 7 points missing: 1 pending, 1 failed.**\n",
        whittle::ENGINE_VERSION
    );
    assert!(md.ends_with(&footer), "{md}");
    let tex = text("main.tex");
    assert!(tex.contains(&format!(
        "% model: tiny, weights {}, tokenizer semantics tokenizers\n",
        "cd".repeat(32)
    )));
    assert!(
        tex.contains("\\caption{pipeline demo.yaml abababababab \\textperiodcentered{} whittle")
    );
    assert!(tex.contains("2 of 7 points missing: 1 pending, 1 failed.}\n\\label{tab:demo-main}"));
    // The CSV stays a plain table; its provenance is the sidecar.
    let csv = text("main.csv");
    assert!(csv.lines().all(|l| l.split(',').count() == 4), "{csv}");
    let p: serde_json::Value = serde_json::from_str(&text("provenance.json")).unwrap();
    assert_eq!(p["pipeline"]["blake3"], "ab".repeat(32));
    assert_eq!(p["points"]["pending"], 1);
    assert_eq!(p["datasets"][0]["name"], "wiki");
    // The long format keeps every instance, with its status.
    let long: Vec<serde_json::Value> = text("report.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(long.len(), 7);
    assert_eq!(long[1]["status"], "pending");
    assert_eq!(long[1]["ppl"], serde_json::Value::Null);
    assert_eq!(long[0]["tokens"], 100.0);
    let txt = text("report.txt");
    assert!(txt.starts_with("main\nmethod "), "{txt}");
    assert!(
        txt.contains("2 of 7 points missing: 1 pending, 1 failed\nprovenance: pipeline demo.yaml")
    );
}

fn line_plot() -> ReportPlot {
    ReportPlot {
        name: "ppl-vs-sparsity".into(),
        kind: PlotKind::Line {
            x: "sparsity".into(),
            y: vec![metric("ppl.ppl"), metric("wiki.ppl")],
        },
        series: vec!["method".into()],
        rows: vec!["sparsity".into(), "method".into()],
        filter: Vec::new(),
        x_scale: AxisScale::Linear,
        y_scale: AxisScale::Linear,
        formats: vec![PlotFormat::Svg, PlotFormat::Png],
    }
}

#[test]
fn line_figure_has_a_panel_per_metric_a_series_per_method_and_the_dense_level() {
    let fig = figure(&sample(), &line_plot()).unwrap();
    assert_eq!(fig.panels.len(), 2);
    let p = &fig.panels[0];
    assert_eq!(p.title, "ppl.ppl");
    assert_eq!(p.baseline, Some(Baseline::Level(10.0)));
    // magnitude's only point is pending: no magnitude series in this panel.
    assert_eq!(p.series.len(), 1);
    assert_eq!(p.series[0].name, "wanda");
    assert_eq!(
        p.series[0].points,
        vec![(0.5, 20.0, None), (0.7, 50.0, None)]
    );
    let w = &fig.panels[1];
    assert_eq!(w.baseline, Some(Baseline::Level(90.0)));
    assert_eq!(w.series[0].name, "magnitude");
    assert_eq!(w.series[0].points, vec![(0.5, 300.0, None)]);
    assert!(
        fig.caption.iter().any(
            |l| l.contains("2 of 7 points missing") && l.contains("ppl.ppl: 1 point not drawn")
        ),
        "{:?}",
        fig.caption
    );
    assert_eq!(fig.size(), (2 * PANEL_WIDTH, fig.size().1));
}

/// `wiki.ppl` against `ppl.ppl`, a series per method, points labelled by sparsity.
fn tradeoff_plot(change: Change) -> ReportPlot {
    ReportPlot {
        name: "tradeoff".into(),
        kind: PlotKind::Tradeoff {
            x: metric("ppl.ppl"),
            y: vec![metric("wiki.ppl")],
            label: vec!["sparsity".into()],
            change,
        },
        series: vec!["method".into()],
        rows: vec!["method".into(), "sparsity".into()],
        filter: Vec::new(),
        x_scale: AxisScale::Linear,
        y_scale: AxisScale::Linear,
        formats: vec![PlotFormat::Png],
    }
}

#[test]
fn tradeoff_ratio_divides_by_the_dense_values_and_labels_points() {
    let mut data = sample();
    // Complete the wanda 0.5 wiki point so it can be placed.
    data.observations[4].outcome = measured(&[("ppl", 180.0)], None);
    let plot = tradeoff_plot(Change::Ratio);
    let fig = figure(&data, &plot).unwrap();
    let p = &fig.panels[0];
    assert_eq!(p.x_label, "ppl.ppl ÷ dense");
    assert_eq!(p.baseline, Some(Baseline::Point(1.0, 1.0)));
    assert_eq!(p.series.len(), 1, "magnitude has no ppl yet");
    // wanda 0.5: ppl 20 / 10, wiki 180 / 90.
    assert_eq!(p.series[0].points, vec![(2.0, 2.0, Some("0.5".into()))]);

    // Without a dense evaluation there is nothing to divide by.
    data.observations.retain(|o| !o.stage.ends_with("-dense"));
    let e = figure(&data, &plot).unwrap_err();
    assert!(matches!(e, ReportError::NoBaseline { .. }), "{e}");
}

#[test]
fn log_scales_apply_per_axis_and_fall_back_to_linear_with_a_note() {
    let mut data = sample();
    data.observations[4].outcome = measured(&[("ppl", 180.0)], None);
    let mut plot = ReportPlot {
        x_scale: AxisScale::Log,
        ..tradeoff_plot(Change::None)
    };
    let fig = figure(&data, &plot).unwrap();
    assert!(fig.panels[0].log_x && !fig.panels[0].log_y);
    assert!(!png(&fig).unwrap().is_empty());
    plot.y_scale = AxisScale::Log;
    let fig = figure(&data, &plot).unwrap();
    assert!(fig.panels[0].log_x && fig.panels[0].log_y);
    assert!(svg(&fig).unwrap().contains("<svg"));
    // A difference from the dense model is 0 at the baseline: no logarithm of it.
    plot.kind = tradeoff_plot(Change::Diff).kind;
    let fig = figure(&data, &plot).unwrap();
    assert!(!fig.panels[0].log_x && !fig.panels[0].log_y);
    let caption = fig.caption.join("\n");
    assert!(caption.contains("x values ≤ 0: linear scale"), "{caption}");
    assert!(caption.contains("y values ≤ 0: linear scale"), "{caption}");
}

/// Decodes a PNG: (width, height, RGB bytes).
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; dec.output_buffer_size().unwrap()];
    let info = dec.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Checks a rendered plot: size, lines in the series colour, dark text in the caption band.
fn check_png(bytes: &[u8], panels: u32) {
    let (w, h, rgb) = decode_png(bytes);
    assert_eq!(w, panels * PANEL_WIDTH);
    assert!(h > PANEL_HEIGHT && h < PANEL_HEIGHT + 100, "height {h}");
    let px = |x: u32, y: u32| {
        let i = ((y * w + x) * 3) as usize;
        (rgb[i], rgb[i + 1], rgb[i + 2])
    };
    let white = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| px(x, y) == (255, 255, 255))
        .count();
    let total = (w * h) as usize;
    assert!(
        white < total * 98 / 100,
        "almost blank: {white} of {total} white"
    );
    let first_series = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| px(x, y) == (31, 119, 180))
        .count();
    assert!(first_series > 50, "series line: {first_series} pixels");
    // The caption is text: dark grey pixels below the panels.
    let caption_ink = (PANEL_HEIGHT..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let (r, g, b) = px(x, y);
            r < 200 && r == g && g == b
        })
        .count();
    assert!(caption_ink > 100, "caption: {caption_ink} pixels");
}

/// Parses an SVG and returns the text of its `<text>` elements.
fn svg_texts(doc: &str) -> Vec<String> {
    let xml = roxmltree::Document::parse(doc).expect("the SVG is well-formed XML");
    assert_eq!(xml.root_element().tag_name().name(), "svg");
    xml.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect()
}

#[test]
fn plots_render_to_decodable_png_and_well_formed_svg() {
    let data = sample();
    let fig = figure(&data, &line_plot()).unwrap();
    check_png(&png(&fig).unwrap(), 2);
    let texts = svg_texts(&svg(&fig).unwrap());
    for want in [
        "ppl.ppl",
        "wiki.ppl",
        "sparsity",
        "dense",
        "wanda",
        "magnitude",
    ] {
        assert!(
            texts.iter().any(|t| t == want),
            "no text {want:?} in {texts:?}"
        );
    }
    assert!(texts.iter().any(|t| t.starts_with("pipeline demo.yaml")));
    // Same figure, same bytes: reports are reproducible.
    assert_eq!(png(&fig).unwrap(), png(&fig).unwrap());
}

// ---- Diagnostics ----

const HEAD: &str = "models:\n  tiny: models/tiny\ndatasets:\n  wiki: data/wiki.txt\nsweep:\n  grid:\n    method: [magnitude, wanda]\n    sparsity: [0.3, 0.5]\nstages:\n  base: {kind: load, model: tiny}\n  calib: {kind: calibrate, model: base, dataset: wiki}\n  pruned: {kind: prune, model: base, method: \"${method}\", sparsity: \"${sparsity}\", calibration: calib}\n  ppl-dense: {kind: evaluate, model: base, task: perplexity, dataset: wiki}\n  ppl: {kind: evaluate, model: pruned, task: perplexity, dataset: wiki}\n  table:\n    kind: report\n    inputs: [ppl-dense, ppl]\n";

/// Loads HEAD plus `report` (lines of the `table` stage) beside a fake model and data file.
fn load(report: &str) -> Result<whittle::pipeline::spec::Pipeline, whittle::pipeline::Diagnostics> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models/tiny")).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let tiny = dir.path().join("models/tiny");
    std::fs::write(tiny.join("config.json"), r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 512}"#).unwrap();
    std::fs::write(tiny.join("tokenizer.json"), "{}").unwrap();
    std::fs::write(tiny.join("model.safetensors"), "").unwrap();
    std::fs::write(dir.path().join("data/wiki.txt"), "a\nb\n").unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, format!("{HEAD}{report}")).unwrap();
    whittle::pipeline::load(&path)
}

/// Line and column (1-based) of the first `needle` after `after` in the report lines.
fn at(report: &str, after: &str, needle: &str) -> (usize, usize) {
    let base = HEAD.lines().count();
    let start = report.find(after).unwrap() + after.len();
    let off = start + report[start..].find(needle).unwrap();
    let line = report[..off].matches('\n').count();
    let col = off - report[..off].rfind('\n').map_or(0, |i| i + 1) + 1;
    (base + line + 1, col)
}

/// The single diagnostic of a broken report, checked for position, key path and message.
#[track_caller]
fn one(
    report: &str,
    pos: (usize, usize),
    key: &str,
    fragments: &[&str],
) -> whittle::pipeline::Diagnostic {
    let d = load(report).expect_err("should not load");
    assert_eq!(d.len(), 1, "{d}");
    let x = d.0[0].clone();
    assert_eq!((x.line, x.col), pos, "{x}");
    assert_eq!(x.key_path, key, "{x}");
    for frag in fragments {
        assert!(x.message.contains(frag), "message lacks {frag:?}: {x}");
    }
    x
}

#[test]
fn unknown_axis_in_rows_suggests_the_close_one() {
    let r = "    tables:\n      - {name: main, rows: [methd, sparsity]}\n";
    let x = one(
        r,
        at(r, "rows", "methd"),
        "stages.table.tables[0].rows[0]",
        &["unknown sweep axis `methd`; did you mean `method`?"],
    );
    assert_eq!(x.expected.as_deref(), Some("`method` or `sparsity`"));
}

#[test]
fn a_metric_of_a_stage_that_is_not_an_input_is_reported() {
    let r = "    plots:\n      - name: p\n        x: sparsity\n        y: [ppl.ppl, pp-dense.ppl, lama.p@1]\n";
    let d = load(r).expect_err("should not load");
    assert_eq!(d.len(), 2, "{d}");
    assert_eq!((d.0[0].line, d.0[0].col), at(r, "y:", "pp-dense"));
    assert_eq!(d.0[0].key_path, "stages.table.plots[0].y[1]");
    assert!(d.0[0]
        .message
        .contains("`pp-dense.ppl`: stage `pp-dense` is not an input of this report; did you mean `ppl-dense`?"));
    assert!(
        d.0[1].message.contains("stage `lama` is not an input"),
        "{d}"
    );
    assert!(d.0[1]
        .help
        .as_deref()
        .unwrap()
        .contains("add `lama` to `inputs`"));
}

#[test]
fn a_metric_needs_stage_dot_name() {
    let r = "    tables:\n      - {name: main, columns: [ppl]}\n";
    let x = one(
        r,
        at(r, "columns", "ppl"),
        "stages.table.tables[0].columns[0]",
        &["expected `<stage>.<metric>`, `model_mb` or `compression`, found `ppl`"],
    );
    assert_eq!(
        x.help.as_deref(),
        Some("name one of its metrics, e.g. `ppl.ppl`")
    );
}

#[test]
fn rows_must_tell_every_point_apart() {
    let r = "    tables:\n      - {name: main, rows: [method]}\n";
    let x = one(
        r,
        at(r, "rows", "[method]"),
        "stages.table.tables[0].rows",
        &["stage `ppl` varies over `sparsity`, which `rows` leaves out"],
    );
    assert!(x.help.unwrap().contains("where: {sparsity: …}"));
    // Pinning the axis with `where` is the other way out.
    let ok = "    tables:\n      - {name: main, rows: [method], where: {sparsity: 0.5}}\n";
    let p = load(ok).unwrap();
    let StageSpec::Report(spec) = &p.stages[5].instances[0].spec else {
        panic!()
    };
    assert_eq!(
        spec.tables[0].filter,
        vec![("sparsity".into(), vec![f(0.5)])]
    );
}

#[test]
fn where_values_must_be_values_of_the_axis() {
    let r = "    tables:\n      - {name: main, where: {sparsity: [0.5, 0.4]}}\n";
    let x = one(
        r,
        at(r, "where", "0.4"),
        "stages.table.tables[0].where.sparsity[1]",
        &["`0.4` is not a value of sweep axis `sparsity`"],
    );
    assert_eq!(x.expected.as_deref(), Some("one of `0.3`, `0.5`"));
}

#[test]
fn line_plots_need_a_numeric_x_and_tables_known_keys() {
    let r = "    plots:\n      - {name: p, x: method, y: ppl.ppl}\n";
    one(
        r,
        at(r, "x:", "method"),
        "stages.table.plots[0].x",
        &["`x` of a line plot must be a numeric sweep axis"],
    );
    let r = "    tables:\n      - {name: main, colums: [ppl.ppl]}\n";
    let x = one(
        r,
        at(r, "name", "colums"),
        "stages.table.tables[0].colums",
        &["unknown key `colums` in a table; did you mean `columns`?"],
    );
    assert_eq!(
        x.expected.as_deref(),
        Some("`name`, `rows`, `columns` or `where`")
    );
    let r = "    tables:\n      - {name: main}\n      - {name: main}\n";
    one(
        r,
        at(r, "- {name: main}\n      - {name: ", "main"),
        "stages.table.tables[1].name",
        &["table name `main` is used twice"],
    );
    let r = "    formats: [md, latex]\n";
    one(
        r,
        at(r, "formats", "latex"),
        "stages.table.formats[1]",
        &["expected `csv`, `md`, `tex` or `jsonl`, found `latex`"],
    );
}

fn key_of(report: &str) -> whittle::cache::Params {
    load(report).unwrap().stages[5].instances[0]
        .spec
        .key_params()
}

#[test]
fn table_and_plot_config_enter_the_key_and_defaults_fill_in() {
    let plain = key_of("");
    assert_eq!(plain.keys().collect::<Vec<_>>(), ["formats"]);
    let t1 = key_of("    tables: [{name: main, columns: [ppl.ppl]}]\n");
    let t2 = key_of("    tables: [{name: main, columns: [{metric: ppl.ppl, label: PPL}]}]\n");
    let p1 = key_of("    plots: [{name: p, x: sparsity, y: ppl.ppl}]\n");
    let p2 = key_of("    plots: [{name: p, x: sparsity, y: ppl.ppl, y_scale: log}]\n");
    assert_ne!(t1, plain);
    assert_ne!(t1, t2, "a column label is part of the output");
    assert_ne!(p1, p2);

    let p = load(
        "    plots:\n      - {name: t, kind: tradeoff, x: ppl.ppl, y: [ppl.nll], change: diff}\n      - {name: l, x: sparsity, y: ppl.ppl}\n",
    )
    .unwrap();
    let StageSpec::Report(spec) = &p.stages[5].instances[0].spec else {
        panic!()
    };
    // Default table: rows over every axis; default formats as before.
    assert!(spec.tables.is_empty());
    assert_eq!(
        spec.formats,
        [
            ReportFormat::Csv,
            ReportFormat::Markdown,
            ReportFormat::Jsonl
        ]
    );
    // Trade-off: categorical axes make the series, numeric ones label the points.
    let t = &spec.plots[0];
    assert_eq!(t.series, ["method"]);
    assert!(
        matches!(&t.kind, PlotKind::Tradeoff { label, change: Change::Diff, .. } if label == &["sparsity"])
    );
    assert_eq!(t.formats, [PlotFormat::Svg, PlotFormat::Png]);
    // Line: the axes other than x make the series.
    assert_eq!(spec.plots[1].series, ["method"]);
    assert_eq!(spec.plots[1].rows, ["sparsity", "method"]);
}

// ---- Column groups, from a plan ----

#[test]
fn evaluations_of_the_same_thing_share_columns_unless_their_points_collide() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap().to_path_buf();
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "models:\n  s: {s}/models/stories260K\ndatasets:\n  d: {s}/data/tinystories/sample.txt\n\
         sweep:\n  grid:\n    sparsity: [0.3, 0.5]\nstages:\n  base: {{kind: load, model: s}}\n\
         \x20 mag: {{kind: prune, model: base, method: magnitude, sparsity: \"${{sparsity}}\"}}\n\
         \x20 rnd: {{kind: prune, model: base, method: random, sparsity: \"${{sparsity}}\"}}\n\
         \x20 dense: {{kind: evaluate, model: base, task: perplexity, dataset: d, seqlen: 32}}\n\
         \x20 e-mag: {{kind: evaluate, model: mag, task: perplexity, dataset: d, seqlen: 32}}\n\
         \x20 e-rnd: {{kind: evaluate, model: rnd, task: perplexity, dataset: d, seqlen: 32}}\n\
         \x20 e-long: {{kind: evaluate, model: mag, task: perplexity, dataset: d, seqlen: 64}}\n\
         \x20 t: {{kind: report, inputs: [dense, e-mag, e-rnd, e-long]}}\n",
        s = shared.display()
    );
    let path = tmp.path().join("g.yaml");
    std::fs::write(&path, text).unwrap();
    let pipeline = whittle::pipeline::load(&path).unwrap();
    let cache = Cache::open(&tmp.path().join("cache")).unwrap();
    let hasher = whittle::cache::FileHasher::load(&cache).unwrap();
    let plan = whittle::plan::build(pipeline, &hasher).unwrap();
    let report = plan.find("t")[0];
    let data = whittle::stages::report::gather(&plan, report, &|_| {
        whittle::stages::report::InputState::Pending
    })
    .unwrap();
    let groups: Vec<(&str, Vec<&str>)> = data
        .groups
        .iter()
        .map(|g| {
            (
                g.name.as_str(),
                g.stages.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    // e-rnd measures what e-mag does at the same points: its own column. e-long differs (seqlen).
    assert_eq!(
        groups,
        [
            ("e-mag", vec!["dense", "e-mag"]),
            ("e-rnd", vec!["e-rnd"]),
            ("e-long", vec!["e-long"])
        ]
    );
    assert_eq!(data.provenance.points.pending, 7);
    assert_eq!(data.provenance.models[0].weights, None);
    let r = render(
        &data,
        &ReportSpec {
            inputs: Vec::new(),
            formats: vec![ReportFormat::Csv],
            tables: Vec::new(),
            plots: Vec::new(),
        },
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(r.file("report.csv").unwrap()),
        "sparsity,e-mag,e-rnd,e-long\n\
         dense,pending,,\n\
         0.3,pending,pending,pending\n\
         0.5,pending,pending,pending\n"
    );
}

// ---- A real sweep, run then reported ----

fn sweep(dir: &Path, shared: &Path, calib_seqlen: usize, sparsity: &str) -> PathBuf {
    let text = format!(
        r#"name: report-test
models:
  stories: {s}/models/stories260K
datasets:
  sample:
    path: {s}/data/tinystories/sample.txt
    documents: separator
    separator: "<|endoftext|>"
  held-out:
    path: {s}/data/tinystories/valid-head.txt
    documents: separator
    separator: "<|endoftext|>"
sweep:
  grid:
    method: [magnitude, wanda]
    sparsity: {sparsity}
stages:
  base: {{kind: load, model: stories}}
  calib: {{kind: calibrate, model: base, dataset: sample, samples: 4, seqlen: {calib_seqlen}}}
  pruned: {{kind: prune, model: base, method: "${{method}}", sparsity: "${{sparsity}}", calibration: calib}}
  ppl-dense: &ppl {{kind: evaluate, model: base, task: perplexity, dataset: sample, seqlen: 32, limit: 2}}
  ppl: {{<<: *ppl, model: pruned}}
  held-dense: &held {{kind: evaluate, model: base, task: perplexity, dataset: held-out, seqlen: 32, limit: 2}}
  held: {{<<: *held, model: pruned}}
  table:
    kind: report
    inputs: [ppl-dense, ppl, held-dense, held]
    formats: [md, csv, tex, jsonl]
    tables:
      - name: main
        rows: [method, sparsity]
        columns: [ppl.ppl, {{metric: held.ppl, label: held_out ppl}}]
    plots:
      - name: ppl-vs-sparsity
        x: sparsity
        y: [ppl.ppl, held.ppl]
        series: method
      - name: tradeoff
        kind: tradeoff
        x: ppl.ppl
        y: held.ppl
        change: ratio
        formats: [png]
"#,
        s = shared.display()
    );
    let path = dir.join("report-test.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn read_csv(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// `ppl` of each evaluation the run computed, by instance label, read from the manifests.
fn manifest_ppl(cache: &Path, run: &RunRecord) -> Vec<(String, f64)> {
    let c = Cache::open(cache).unwrap();
    run.stages
        .iter()
        .filter(|s| s.kind == "evaluate")
        .map(|s| {
            let Lookup::Hit(e) = c.lookup(&s.key.unwrap()).unwrap() else {
                panic!("{} not cached", s.instance)
            };
            let ppl = e.manifest().meta["metrics"]["ppl"].as_f64().unwrap();
            (s.instance.clone(), ppl)
        })
        .collect()
}

fn entry_content(cache: &Path, run: &RunRecord, instance: &str) -> String {
    let rec = run.stages.iter().find(|s| s.instance == instance).unwrap();
    let Lookup::Hit(e) = Cache::open(cache)
        .unwrap()
        .lookup(&rec.key.unwrap())
        .unwrap()
    else {
        panic!()
    };
    e.content().hex()
}

#[test]
fn a_run_then_whittle_report_renders_every_row_column_and_provenance() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap().to_path_buf();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = dir.join("cache");
    let file = sweep(dir, &shared, 32, "[0.3, 0.6]");

    let out = common::whittle_in(dir, &cache, &["run", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("table  (reports/report-test/table)"),
        "{stdout}"
    );
    let run = common::last_run(&cache);
    let copied = dir.join("reports/report-test/table");

    let out = common::whittle_in(
        dir,
        &cache,
        &["report", file.to_str().unwrap(), "--out", "paper"],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains("missing"), "{printed}");
    let rep = dir.join("paper/table");

    // One rendering path: the run's entry and `whittle report` wrote the same bytes.
    let mut names: Vec<String> = std::fs::read_dir(&rep)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "main.csv",
            "main.md",
            "main.tex",
            "ppl-vs-sparsity.png",
            "ppl-vs-sparsity.svg",
            "provenance.json",
            "report.jsonl",
            "report.txt",
            "tradeoff.png"
        ]
    );
    for n in &names {
        let (a, b) = (
            std::fs::read(rep.join(n)).unwrap(),
            std::fs::read(copied.join(n)).unwrap(),
        );
        assert!(
            a == b,
            "{n} differs between the run and `whittle report`:\n{}\n{}",
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b)
        );
    }

    // Rows and columns, values as the evaluation manifests recorded them.
    let csv = read_csv(&rep.join("main.csv"));
    assert_eq!(csv[0], ["method", "sparsity", "ppl.ppl", "held_out ppl"]);
    let keys: Vec<(&str, &str)> = csv[1..]
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("dense", ""),
            ("magnitude", "0.3"),
            ("magnitude", "0.6"),
            ("wanda", "0.3"),
            ("wanda", "0.6")
        ]
    );
    let ppl = manifest_ppl(&cache, &run);
    let of = |label: &str| ppl.iter().find(|(l, _)| l == label).unwrap().1;
    for row in &csv[1..] {
        let (ev, held) = if row[0] == "dense" {
            ("ppl-dense".to_string(), "held-dense".to_string())
        } else {
            let p = format!("[method={},sparsity={}]", row[0], row[1]);
            (format!("ppl{p}"), format!("held{p}"))
        };
        assert_eq!(row[2].parse::<f64>().unwrap(), of(&ev), "{ev}");
        assert_eq!(row[3].parse::<f64>().unwrap(), of(&held), "{held}");
    }
    // Pruning hurts: every pruned model is worse than the dense one on held-out text.
    assert!(csv[2..]
        .iter()
        .all(|r| r[3].parse::<f64>().unwrap() > of("held-dense")));

    // Provenance: digests computed here from the files themselves.
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rep.join("provenance.json")).unwrap()).unwrap();
    let file_hash = blake3::hash(&std::fs::read(&file).unwrap())
        .to_hex()
        .to_string();
    assert_eq!(prov["pipeline"]["blake3"], file_hash.as_str());
    assert_eq!(prov["engine_version"], whittle::ENGINE_VERSION);
    let weights = entry_content(&cache, &run, "base");
    assert_eq!(prov["models"][0]["weights"], weights.as_str());
    let data_hash = |rel: &str| {
        blake3::hash(&std::fs::read(shared.join(rel)).unwrap())
            .to_hex()
            .to_string()
    };
    assert_eq!(prov["datasets"][0]["name"], "held-out");
    assert_eq!(
        prov["datasets"][0]["blake3"],
        data_hash("data/tinystories/valid-head.txt").as_str()
    );
    assert_eq!(
        prov["datasets"][1]["blake3"],
        data_hash("data/tinystories/sample.txt").as_str()
    );
    assert_eq!(prov["seqlen"], serde_json::json!([32]));
    assert_eq!(prov["devices"], serde_json::json!(["cpu"]));
    assert_eq!(prov["points"]["total"], 10);
    let md = std::fs::read_to_string(rep.join("main.md")).unwrap();
    assert!(
        md.contains(&format!("model stories `{}`", &weights[..12])),
        "{md}"
    );
    assert!(md.contains(&format!("report-test.yaml `{}`", &file_hash[..12])));
    let tex = std::fs::read_to_string(rep.join("main.tex")).unwrap();
    assert!(tex.contains(&format!(
        "% model: stories, weights {weights}, tokenizer semantics tokenizers\n"
    )));
    assert_eq!(prov["models"][0]["tokenizer_semantics"], "tokenizers");
    assert!(tex.contains("held\\_out ppl"));
    assert!(tex.contains("\\caption{pipeline report-test.yaml"));
    assert!(printed.contains(&format!(
        "provenance: pipeline report-test.yaml {}",
        &file_hash[..12]
    )));

    // Plots: decodable, of the expected size, drawn; the SVG is XML with the labels as text.
    check_png(&std::fs::read(rep.join("ppl-vs-sparsity.png")).unwrap(), 2);
    check_png(&std::fs::read(rep.join("tradeoff.png")).unwrap(), 1);
    let texts = svg_texts(&std::fs::read_to_string(rep.join("ppl-vs-sparsity.svg")).unwrap());
    for want in [
        "ppl.ppl",
        "held_out ppl",
        "sparsity",
        "dense",
        "magnitude",
        "wanda",
    ] {
        assert!(texts.iter().any(|t| t == want), "no {want:?} in {texts:?}");
    }
    assert!(texts
        .iter()
        .any(|t| t.starts_with("pipeline report-test.yaml") && t.contains(&weights[..12])));

    // Now the calibration fails (no story is 4000 tokens long) and a sparsity is added: wanda's
    // points are failed, magnitude's new point is pending, the rest still comes from the cache.
    sweep(dir, &shared, 4000, "[0.3, 0.6]");
    let out = common::whittle_in(
        dir,
        &cache,
        &["run", file.to_str().unwrap(), "--keep-going"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    let run2 = common::last_run(&cache);
    assert!(run2
        .stages
        .iter()
        .any(|s| s.instance == "calib" && s.status == StageStatus::Failed));
    sweep(dir, &shared, 4000, "[0.3, 0.6, 0.8]");
    let out = common::whittle_in(
        dir,
        &cache,
        &["report", file.to_str().unwrap(), "--out", "paper"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", common::text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("8 of 14 points missing: 2 pending, 6 failed"),
        "{printed}"
    );
    let csv = read_csv(&rep.join("main.csv"));
    let cells: Vec<[&str; 4]> = csv[1..]
        .iter()
        .map(|r| [r[0].as_str(), r[1].as_str(), r[2].as_str(), r[3].as_str()])
        .collect();
    let num = |s: &str| s.parse::<f64>().is_ok();
    assert_eq!(cells.len(), 7);
    assert!(
        cells[..3].iter().all(|r| num(r[2]) && num(r[3])),
        "{cells:?}"
    );
    assert_eq!(cells[3], ["magnitude", "0.8", "pending", "pending"]);
    for r in &cells[4..] {
        assert_eq!((r[0], r[2], r[3]), ("wanda", "failed", "failed"));
    }
    // Cached values did not change.
    assert_eq!(
        cells[1][2].parse::<f64>().unwrap(),
        of("ppl[method=magnitude,sparsity=0.3]")
    );
    let md = std::fs::read_to_string(rep.join("main.md")).unwrap();
    assert!(
        md.contains("| magnitude | 0.8 | pending | pending |"),
        "{md}"
    );
    assert!(md.contains("**8 of 14 points missing: 2 pending, 6 failed.**"));
    // The plots still render, saying what they leave out.
    let texts = svg_texts(&std::fs::read_to_string(rep.join("ppl-vs-sparsity.svg")).unwrap());
    assert!(
        texts.iter().any(|t| t.contains("8 of 14 points missing")),
        "{texts:?}"
    );
}

#[test]
fn publishing_replaces_the_whole_directory_or_nothing() {
    use whittle::stages::report::render::replace_dir;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("reports/p/table");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("old-plot.png"), b"stale").unwrap();
    std::fs::write(dir.join("table.md"), b"old").unwrap();
    // A rendering that fails leaves the previous one as it was.
    let e = replace_dir(&dir, |d| {
        std::fs::write(d.join("table.md"), b"half").unwrap();
        Err(ReportError::Draw("boom".into()))
    })
    .unwrap_err();
    assert!(matches!(e, ReportError::Draw(_)));
    assert_eq!(std::fs::read(dir.join("table.md")).unwrap(), b"old");
    assert!(dir.join("old-plot.png").is_file());
    // A rendering that succeeds leaves exactly its own files, and no temporary siblings.
    replace_dir(&dir, |d| {
        std::fs::write(d.join("table.md"), b"new").unwrap();
        Ok(())
    })
    .unwrap();
    let names = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&dir), ["table.md"]);
    assert_eq!(std::fs::read(dir.join("table.md")).unwrap(), b"new");
    assert_eq!(names(dir.parent().unwrap()), ["table"]);
}

// ---- Lineage, model size and what is read out of the cache ----

/// A sweep of magnitude pruning, plus one pruned-then-quantized model that uses no sweep axis.
fn lineage(dir: &Path, shared: &Path) -> PathBuf {
    let text = format!(
        r#"name: lineage
models:
  stories: {s}/models/stories260K
datasets:
  sample:
    path: {s}/data/tinystories/sample.txt
    documents: separator
    separator: "<|endoftext|>"
sweep:
  grid:
    sparsity: [0.3, 0.5]
stages:
  base: {{kind: load, model: stories}}
  mag: {{kind: prune, model: base, method: magnitude, sparsity: "${{sparsity}}"}}
  p40: {{kind: prune, model: base, method: magnitude, sparsity: 0.4}}
  pq: {{kind: quantize, model: p40, method: rtn, bits: 8, group_size: -1}}
  ppl-base: &ppl {{kind: evaluate, model: base, task: perplexity, dataset: sample, seqlen: 32, limit: 2}}
  ppl: {{<<: *ppl, model: mag}}
  ppl-pq: {{<<: *ppl, model: pq}}
  table:
    kind: report
    inputs: [ppl-base, ppl, ppl-pq]
    formats: [csv, jsonl]
    tables:
      - name: main
        rows: [sparsity]
        columns: [model_mb, compression, ppl.ppl]
"#,
        s = shared.display()
    );
    let path = dir.join("lineage.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn entry_of(cache: &Path, run: &RunRecord, instance: &str) -> whittle::cache::Entry {
    let rec = run.stages.iter().find(|s| s.instance == instance).unwrap();
    match Cache::open(cache)
        .unwrap()
        .lookup(&rec.key.unwrap())
        .unwrap()
    {
        Lookup::Hit(e) => e,
        _ => panic!("{instance} is not cached"),
    }
}

/// The rows of `report.jsonl`, by stage label (`stage` plus the sweep point).
fn long_rows(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn run_lineage() -> Option<(tempfile::TempDir, PathBuf, PathBuf, RunRecord)> {
    let shared = common::shared("models/stories260K")?;
    let shared = shared.parent().unwrap().parent().unwrap().to_path_buf();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let file = lineage(tmp.path(), &shared);
    let out = common::whittle_in(tmp.path(), &cache, &["run", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::text(&out));
    let run = common::last_run(&cache);
    Some((tmp, cache, file, run))
}

macro_rules! lineage_or_skip {
    () => {
        match run_lineage() {
            Some(x) => x,
            None => {
                let _ = require_shared!("models/stories260K");
                return;
            }
        }
    };
}

fn metric_of(e: &whittle::cache::Entry, name: &str) -> f64 {
    e.manifest().meta["metrics"][name].as_f64().unwrap()
}

#[test]
fn a_compressed_model_without_sweep_axes_is_not_shown_as_dense() {
    let (tmp, cache, _, run) = lineage_or_skip!();
    let csv = std::fs::read_to_string(tmp.path().join("reports/lineage/table/main.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "sparsity,model_mb,compression,ppl.ppl", "{csv}");
    assert_eq!(lines.len(), 5, "dense, two sparsities, pq: {csv}");
    let last = |l: &str| l.rsplit(',').next().unwrap().parse::<f64>().unwrap();
    // The dense row holds the evaluation of the loaded model, and only it.
    let base = metric_of(&entry_of(&cache, &run, "ppl-base"), "ppl");
    let pq = metric_of(&entry_of(&cache, &run, "ppl-pq"), "ppl");
    assert!(lines[1].starts_with("dense,"), "{csv}");
    assert_eq!(last(lines[1]), base);
    assert!(lines[2].starts_with("0.3,") && lines[3].starts_with("0.5,"));
    // The quantized model is labelled by its own stage and parameters, in the same column.
    assert!(
        lines[4].starts_with("\"pq (bits=8, group_size=-1, method=rtn,"),
        "{csv}"
    );
    assert_eq!(last(lines[4]), pq);
    assert_ne!(base, pq);
}

#[test]
fn model_mb_is_the_deployed_model_size_with_its_compression_ratio() {
    let (tmp, cache, _, run) = lineage_or_skip!();
    let rows = long_rows(&tmp.path().join("reports/lineage/table/report.jsonl"));
    let params = entry_of(&cache, &run, "base").manifest().meta["parameters"]
        .as_u64()
        .unwrap();
    let dense = params * 4; // f32
                            // Each overlay tensor as deployed, from its shape and the overlay's format, by hand.
    let deployed = |instance: &str| -> (u64, u64) {
        let e = entry_of(&cache, &run, instance);
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.path("overlay/overlay.json")).unwrap())
                .unwrap();
        let (mut replaced, mut packed) = (0u64, 0u64);
        for r in index["tensors"].as_array().unwrap() {
            let shape: Vec<u64> = r["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let numel = shape[0] * shape[1];
            replaced += numel * 4;
            packed += match r["encoding"]["kind"].as_str().unwrap() {
                // Header, the bitset in u64 words, then the kept values in f32.
                "masked" => {
                    let blob =
                        std::fs::read(e.path(format!("overlay/{}", r["file"].as_str().unwrap())))
                            .unwrap();
                    let pruned: u64 = blob[24..].iter().map(|b| b.count_ones() as u64).sum();
                    24 + numel.div_ceil(64) * 8 + (numel - pruned) * 4
                }
                // 8-bit codes, then an f32 scale and a u8 zero per row and group.
                "quantized" => {
                    let groups = r["encoding"]["n_groups"].as_u64().unwrap();
                    numel + shape[0] * groups * 5
                }
                k => panic!("unexpected encoding {k}"),
            };
        }
        (replaced, packed)
    };
    let row = |stage: &str, sparsity: Option<f64>| {
        rows.iter()
            .find(|r| {
                r["stage"] == stage && sparsity.is_none_or(|s| r["sparsity"].as_f64() == Some(s))
            })
            .unwrap_or_else(|| panic!("no {stage} in {rows:?}"))
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
    let base = row("ppl-base", None);
    assert!(close(
        base["model_mb"].as_f64().unwrap(),
        dense as f64 / 1e6
    ));
    assert_eq!(base["compression"].as_f64().unwrap(), 1.0);
    for (stage, sparsity, instance) in [
        ("ppl", Some(0.3), "mag[sparsity=0.3]"),
        ("ppl", Some(0.5), "mag[sparsity=0.5]"),
        ("ppl-pq", None, "pq"),
    ] {
        let (replaced, packed) = deployed(instance);
        let bytes = dense - replaced + packed;
        let r = row(stage, sparsity);
        let mb = r["model_mb"].as_f64().unwrap();
        assert!(close(mb, bytes as f64 / 1e6), "{instance}: {mb} vs {bytes}");
        let ratio = r["compression"].as_f64().unwrap();
        assert!(
            close(ratio, dense as f64 / bytes as f64),
            "{instance}: {ratio}"
        );
    }
    // More pruning, a smaller model; 8-bit codes take about a quarter of f32.
    let mb = |s| row("ppl", Some(s))["model_mb"].as_f64().unwrap();
    assert!(mb(0.5) < mb(0.3) && mb(0.3) < dense as f64 / 1e6);
    assert!(row("ppl-pq", None)["compression"].as_f64().unwrap() > 2.0);
}

#[test]
fn size_mb_is_refused_with_a_pointer_to_model_mb() {
    let r = "    tables:\n      - {name: main, columns: [size_mb]}\n";
    let x = one(
        r,
        at(r, "columns", "size_mb"),
        "stages.table.tables[0].columns[0]",
        &["`size_mb` is no longer a report metric"],
    );
    assert!(x.help.as_deref().unwrap().contains("`model_mb`"), "{x:?}");
}

#[test]
fn a_corrupt_cached_report_is_recomputed_not_copied_out() {
    let (tmp, cache, file, run) = lineage_or_skip!();
    let published = tmp.path().join("reports/lineage/table/report.jsonl");
    let good = std::fs::read(&published).unwrap();
    let entry = entry_of(&cache, &run, "table");
    let path = entry.path("report.jsonl");
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.iter().position(|b| b.is_ascii_digit()).unwrap();
    bytes[i] = if bytes[i] == b'9' { b'8' } else { bytes[i] + 1 };
    std::fs::write(&path, &bytes).unwrap();

    let out = common::whittle_in(tmp.path(), &cache, &["run", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(std::fs::read(&published).unwrap(), good);
    let again = common::last_run(&cache);
    let rec = again.stages.iter().find(|s| s.instance == "table").unwrap();
    assert_eq!(rec.status, StageStatus::Ran);
}

#[test]
fn editing_meta_metrics_in_a_manifest_does_not_change_the_table() {
    let (tmp, cache, file, run) = lineage_or_skip!();
    let table = tmp.path().join("reports/lineage/table/main.csv");
    let good = std::fs::read_to_string(&table).unwrap();
    let entry = entry_of(&cache, &run, "ppl-pq");
    let ppl = metric_of(&entry, "ppl");
    let manifest = entry.path("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["meta"]["metrics"]["ppl"] = serde_json::json!(1.5);
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();

    // Re-rendering from the cache finds the mismatch: no table with the edited value.
    let out = common::whittle_in(tmp.path(), &cache, &["report", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("meta.metrics"),
        "{}",
        common::text(&out)
    );
    assert_eq!(std::fs::read_to_string(&table).unwrap(), good);
    // The entry went to quarantine: the next run recomputes it, and the value is the real one.
    let out = common::whittle_in(tmp.path(), &cache, &["run", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::text(&out));
    let csv = std::fs::read_to_string(&table).unwrap();
    assert!(!csv.contains(",1.5\n"), "{csv}");
    let last = csv.lines().last().unwrap().rsplit(',').next().unwrap();
    assert_eq!(last.parse::<f64>().unwrap(), ppl);
}

/// A panel whose points sit in every corner of the data area and in its middle.
fn crowded_panel() -> whittle::stages::report::plot::Panel {
    use whittle::stages::report::plot::{Panel, Series};
    let corners = |dy: f64| vec![(0.0, dy, None), (0.5, 0.5, None), (1.0, 1.0 - dy, None)];
    Panel {
        title: "t".into(),
        x_label: "x".into(),
        y_label: "y".into(),
        series: vec![
            Series {
                name: "magnitude".into(),
                points: corners(1.0),
            },
            Series {
                name: "sparsegpt".into(),
                points: corners(0.0),
            },
        ],
        baseline: Some(Baseline::Level(0.9)),
        log_x: false,
        log_y: false,
    }
}

#[test]
fn plot_legends_cover_no_point_and_axes_use_the_table_labels() {
    let fig = whittle::stages::report::plot::Figure {
        panels: vec![crowded_panel()],
        caption: vec!["c".into()],
    };
    let doc = svg(&fig).unwrap();
    let xml = roxmltree::Document::parse(&doc).unwrap();
    let num = |n: &roxmltree::Node, a: &str| n.attribute(a).unwrap().parse::<f64>().unwrap();
    // The legend box: the framed rectangle around the series names (not the background).
    let boxes: Vec<(f64, f64, f64, f64)> = xml
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("stroke").is_some())
        .filter(|n| (num(n, "x"), num(n, "y")) != (0.0, 0.0))
        .map(|n| {
            let (x, y) = (num(&n, "x"), num(&n, "y"));
            (x, y, x + num(&n, "width"), y + num(&n, "height"))
        })
        .collect();
    assert!(!boxes.is_empty(), "{doc}");
    let points: Vec<(f64, f64)> = xml
        .descendants()
        .filter(|n| n.has_tag_name("circle"))
        .map(|n| (num(&n, "cx"), num(&n, "cy")))
        .collect();
    // Six data points, plus the legend's own swatches (inside its box).
    let data: Vec<&(f64, f64)> = points
        .iter()
        .filter(|(x, y)| {
            !boxes
                .iter()
                .any(|b| *x >= b.0 && *x <= b.2 && *y >= b.1 && *y <= b.3)
        })
        .collect();
    assert_eq!(
        data.len(),
        6,
        "points under a legend: {points:?} boxes {boxes:?}"
    );

    // Through a report: the plot's axes and titles read as the table's headers.
    let mut s = spec(vec![ReportFormat::Csv], vec![line_plot()]);
    s.tables[0].columns = Some(vec![
        col("ppl.ppl", Some("WikiText ppl")),
        col("wiki.ppl", None),
    ]);
    let r = render(&sample(), &s).unwrap();
    let texts = svg_texts(std::str::from_utf8(r.file("ppl-vs-sparsity.svg").unwrap()).unwrap());
    assert!(texts.iter().any(|t| t == "WikiText ppl"), "{texts:?}");
    assert!(!texts.iter().any(|t| t == "ppl.ppl"), "{texts:?}");
    assert!(texts.iter().any(|t| t == "wiki.ppl"), "{texts:?}");
}

#[test]
fn provenance_lists_a_trained_model_and_the_engine_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let facts = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/facts");
    let text = format!(
        r#"name: trained
datasets:
  bio: {{path: {f}/train.txt, documents: separator, separator: "<|endoftext|>"}}
  held: {{path: {f}/heldout.txt, documents: separator, separator: "<|endoftext|>"}}
stages:
  base: {{kind: train, dataset: bio, vocabulary: held, dim: 16, layers: 1, heads: 2, kv_heads: 1, hidden: 32, seqlen: 16, batch: 2, steps: 2, warmup: 1}}
  ppl: {{kind: evaluate, model: base, task: perplexity, dataset: held, seqlen: 16, limit: 1}}
  table: {{kind: report, inputs: [ppl], formats: [csv]}}
"#,
        f = facts.display()
    );
    let file = tmp.path().join("trained.yaml");
    std::fs::write(&file, text).unwrap();
    let cache = tmp.path().join("cache");
    let out = common::whittle_in(tmp.path(), &cache, &["run", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::text(&out));
    let run = common::last_run(&cache);
    let prov: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("reports/trained/table/provenance.json")).unwrap(),
    )
    .unwrap();
    let weights = entry_content(&cache, &run, "base");
    assert_eq!(
        prov["models"],
        serde_json::json!([{"name": "base", "weights": weights, "tokenizer_semantics": "tokenizers"}])
    );
    // Built from a checkout: the version names the commit.
    let git = std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output();
    let version = prov["engine_version"].as_str().unwrap();
    match git {
        Ok(o) if o.status.success() => {
            let commit = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let want = format!("{}+{commit}", env!("CARGO_PKG_VERSION"));
            assert!(
                version == want || version == format!("{want}-dirty"),
                "{version} vs {want}"
            );
        }
        _ => assert_eq!(version, env!("CARGO_PKG_VERSION")),
    }
    // Never in a key: the report's key inputs hold no engine version.
    let key = entry_of(&cache, &run, "table")
        .manifest()
        .key_inputs
        .clone();
    assert!(!serde_json::to_string(&key).unwrap().contains(version));
}
