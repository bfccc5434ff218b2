//! Command-line interface: parses arguments, calls the library, prints, and picks the exit code.

/// `println!` that a closed stdout cannot crash (see [`out`]).
macro_rules! outln {
    () => { crate::cli::out::write(format_args!("\n")) };
    ($($t:tt)*) => { crate::cli::out::write(format_args!("{}\n", format_args!($($t)*))) };
}
/// `print!` that a closed stdout cannot crash.
macro_rules! out {
    ($($t:tt)*) => { crate::cli::out::write(format_args!($($t)*)) };
}

mod exit;
mod formats;
mod out;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use whittle::cache::{Cache, FileHasher, GcOptions, RunRecord, StageStatus};
use whittle::exec::{DeviceKind, RunOptions};
use whittle::pipeline::spec::StageSpec;
use whittle::plan::{self, Format, History, Plan, Status};
use whittle::stages::report::ReportError;

pub use exit::{outcome_of, Outcome, EXIT_CODES};
use exit::{Invalid, Usage};

#[derive(Parser, Debug)]
#[command(
    name = "whittle",
    version,
    about = "Declarative LLM-compression experiments: YAML pipelines, a DAG scheduler, a content-addressed cache",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Cache directory (default: `cache/` at the root of the repository holding the pipeline).
    #[arg(long, global = true, env = "WHITTLE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Log to stderr too (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Where `run` and `report` copy reports: DIR/<pipeline>/<stage>/ (default: `reports/` at
    /// the root of the repository holding the pipeline).
    #[arg(long, global = true, value_name = "DIR", env = "WHITTLE_REPORTS_DIR")]
    pub reports_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a pipeline: every stage not already in the cache (or only the targets named, and
    /// what they need).
    #[command(after_help = EXIT_CODES)]
    Run {
        file: PathBuf,
        /// Run only these stages or instances (`ppl[sparsity=0.5]`) and the stages they need.
        #[arg(value_name = "STAGE")]
        targets: Vec<String>,
        /// Same as naming targets after the file (repeatable; labels hold commas, so one per flag).
        #[arg(long, value_name = "STAGE")]
        only: Vec<String>,
        /// Recompute these stages or instances even if cached; stages below them rerun only
        /// if the recomputed output differs (repeatable).
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Print the plan (what would run and why) and stop; nothing runs or is written.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Stages running at once (default: one per device in `--devices`; each device's
        /// memory still limits what shares it).
        #[arg(short, long)]
        jobs: Option<usize>,
        /// Devices to run on, e.g. `cpu` or `cpu,cuda:0,cuda:1` (CUDA needs `--features cuda`).
        #[arg(long, value_delimiter = ',', default_value = "cpu")]
        devices: Vec<String>,
        /// Memory each stage may hold (`24G`, `4096M`; default: the device's). A model larger
        /// than half of it is read block by block instead of held whole.
        #[arg(long, value_parser = parse_bytes)]
        memory: Option<u64>,
        /// After a failure, keep running the stages that do not depend on it.
        #[arg(long)]
        keep_going: bool,
        #[command(flatten)]
        executor: ExecutorArgs,
    },
    /// Compute exactly one stage instance into the cache (what a cluster job runs): its inputs
    /// must be cached already. Prints the entry's key.
    #[command(hide = true, after_help = EXIT_CODES)]
    RunNode {
        file: PathBuf,
        /// The instance, by label (`pruned[sparsity=0.5]`), or a stage with one instance.
        #[arg(
            long,
            value_name = "STAGE",
            required_unless_present = "key",
            conflicts_with = "key"
        )]
        node: Option<String>,
        /// The instance, by its cache key (`whittle plan --format json` lists them); a unique
        /// prefix will do.
        #[arg(long)]
        key: Option<String>,
        /// The device to run on: `cpu` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Memory the stage may hold, as for `run --memory`.
        #[arg(long, value_parser = parse_bytes)]
        memory: Option<u64>,
        /// Also write the entry's key, and whether this process computed it, to FILE (JSON),
        /// for the process that submitted the job.
        #[arg(long, value_name = "FILE")]
        result: Option<PathBuf>,
    },
    /// Show each stage instance, its key, and whether it is cached or will run (and why);
    /// with `--executor slurm`, also the job each would be submitted as.
    Plan {
        file: PathBuf,
        #[arg(long, default_value = "text", value_parser = formats::plan())]
        format: Format,
        #[command(flatten)]
        executor: ExecutorArgs,
    },
    /// Summarize, per stage, how many instances are cached, corrupt or still to run.
    Status {
        file: PathBuf,
        #[arg(long, default_value = "text", value_parser = formats::status())]
        format: plan::StatusFormat,
    },
    /// Print the results the cache holds for the pipeline's evaluate stages: one row per
    /// instance, its sweep axes and its metrics (`pending` where not computed yet); runs nothing.
    Show {
        file: PathBuf,
        #[arg(long, default_value = "table", value_parser = formats::show())]
        format: whittle::show::ShowFormat,
    },
    /// Explain why a stage (name or instance label) would run: what changed in its key.
    Why { file: PathBuf, stage: String },
    /// Write a cached weights stage (load, prune or quantize) as a Hugging Face model folder.
    Export {
        file: PathBuf,
        /// A stage name with one instance, or an instance label such as
        /// 'pruned[method=wanda,sparsity=0.5]'.
        stage: String,
        /// The folder to create (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Render every report stage's tables and plots from what the cache holds; runs nothing.
    /// Points not computed yet show as `pending`, those whose stage failed as `failed`.
    Report {
        file: PathBuf,
        /// Write the files to DIR/<stage>/ instead of reports/<pipeline>/<stage>/.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Write the synthetic world the quickstart model learns: `train.txt`, `heldout.txt`
    /// (documents separated by `<|endoftext|>`) and the facts in LAMA layout under `facts/`.
    Synth {
        /// The folder to write into (created if absent; files there are overwritten).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Write a random-weight checkpoint shaped like a real model (sharded safetensors, config,
    /// tokenizer), for memory and time measurements at scale. Its outputs mean nothing.
    SynthModel {
        /// The architecture to imitate: llama2-7b or llama2-13b.
        #[arg(long, default_value = "llama2-7b")]
        preset: String,
        /// Blocks (default: the preset's).
        #[arg(long)]
        layers: Option<usize>,
        /// Width and MLP width, e.g. `512:1376` (default: the preset's).
        #[arg(long)]
        width: Option<String>,
        /// Stored dtype: bf16, f16 or f32.
        #[arg(long, default_value = "bf16")]
        dtype: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Largest shard.
        #[arg(long, default_value = "2G", value_parser = parse_bytes)]
        shard_size: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-hash every cache entry the given pipelines reach (or, with none, every entry), move
    /// those that fail to quarantine, and exit 1 if any failed.
    Verify {
        /// Pipelines whose entries are checked (default: the whole cache).
        files: Vec<PathBuf>,
    },
    /// Remove cache entries that no given pipeline reaches, or older than a date. Entries a
    /// running job holds are kept. With -v, lists each entry removed (key, stage, size).
    Gc {
        /// Pipelines whose current results are kept.
        files: Vec<PathBuf>,
        /// Also remove entries created before this date (`2026-11-01`) or this long ago (`7d`).
        #[arg(long)]
        older_than: Option<String>,
        /// Show what would be removed without removing it.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Where a run's stages run.
#[derive(clap::Args, Debug)]
pub struct ExecutorArgs {
    /// `local` (this machine, the default) or `slurm` (one `sbatch` job per stage; the cache
    /// must be on a filesystem every compute node sees). Overrides the profile's `kind`.
    #[arg(long, value_parser = ["local", "slurm"])]
    executor: Option<String>,
    /// A profile file (YAML) whose `executor:` section sets partition, account, qos, time
    /// limit, extra sbatch flags, how many jobs may be queued (see README, "Running on a
    /// cluster").
    #[arg(long, value_name = "FILE", env = "WHITTLE_PROFILE")]
    profile: Option<PathBuf>,
}

impl ExecutorArgs {
    /// The Slurm profile, if the run goes to Slurm.
    fn slurm(&self) -> Result<Option<whittle::exec::slurm::Profile>> {
        use whittle::exec::slurm::{ExecutorKind, Profile};
        let profile = match &self.profile {
            Some(path) => Profile::load(path).map_err(|e| Usage(e.to_string()))?,
            None => Profile::default(),
        };
        let kind = self
            .executor
            .as_deref()
            .and_then(ExecutorKind::parse)
            .or(profile.kind)
            .unwrap_or(ExecutorKind::Local);
        Ok((kind == ExecutorKind::Slurm).then_some(profile))
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match run(cli) {
        Ok(o) => o,
        Err(e) => {
            if !e.is::<Invalid>() {
                eprintln!("error: {}", exit::describe(&e));
            }
            outcome_of(&e)
        }
    };
    out::flush();
    match out::failure() {
        Some(e) if outcome == Outcome::Success => {
            eprintln!("error: writing to standard output: {e}");
            Outcome::Failed.into()
        }
        _ => outcome.into(),
    }
}

pub fn run(cli: Cli) -> Result<Outcome> {
    match &cli.command {
        Command::Run {
            file,
            targets,
            only,
            force,
            dry_run,
            jobs,
            devices,
            keep_going,
            memory,
            executor,
        } => {
            let devices = devices
                .iter()
                .map(|d| DeviceKind::parse(d))
                .collect::<Result<Vec<_>, _>>()?;
            let opts = RunOptions {
                jobs: jobs.unwrap_or_else(|| whittle::exec::default_jobs(&devices)),
                devices,
                keep_going: *keep_going,
                progress: !cli.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
                memory: *memory,
                slurm: executor.slurm()?,
            };
            let targets: Vec<String> = targets.iter().chain(only).cloned().collect();
            let sel = Selection {
                targets: &targets,
                force,
            };
            if *dry_run {
                return cmd_dry_run(&cli, file, &sel);
            }
            cmd_run(&cli, file, &opts, &sel)
        }
        Command::RunNode {
            file,
            node,
            key,
            device,
            memory,
            result,
        } => cmd_run_node(
            &cli,
            file,
            node.as_deref(),
            key.as_deref(),
            device,
            *memory,
            result.as_deref(),
        ),
        Command::Plan {
            file,
            format,
            executor,
        } => cmd_plan(&cli, file, *format, executor),
        Command::Status { file, format } => cmd_status(&cli, file, *format),
        Command::Show { file, format } => {
            let (cache, plan) = open_read_only(&cli, file)?;
            let history = History::load(&cache, &plan.pipeline.path.display().to_string());
            let statuses = plan::resolve(&plan, &cache, &history)?;
            out!("{}", whittle::show::render(&plan, &statuses, *format));
            Ok(Outcome::Success)
        }
        Command::Why { file, stage } => cmd_why(&cli, file, stage),
        Command::Export { file, stage, out } => cmd_export(&cli, file, stage, out),
        Command::Report { file, out } => cmd_report(&cli, file, out.as_deref()),
        Command::Synth { out, seed } => cmd_synth(out, *seed),
        Command::SynthModel {
            preset,
            layers,
            width,
            dtype,
            seed,
            shard_size,
            out,
        } => cmd_synth_model(
            preset,
            *layers,
            width.as_deref(),
            dtype,
            *seed,
            *shard_size,
            out,
        ),
        Command::Verify { files } => cmd_verify(&cli, files),
        Command::Gc {
            files,
            older_than,
            dry_run,
        } => cmd_gc(&cli, files, older_than.as_deref(), *dry_run),
    }
}

/// `whittle synth`: the default world with this seed.
fn cmd_synth(out: &Path, seed: u64) -> Result<Outcome> {
    let cfg = whittle::train::synth::SynthConfig {
        seed,
        ..Default::default()
    };
    let corpus = whittle::train::synth::generate(&cfg)?;
    corpus.write(out)?;
    outln!(
        "wrote {} training and {} held-out documents, {} facts on {} people to {}",
        corpus.train.len(),
        corpus.heldout.len(),
        corpus.facts.len(),
        corpus.entities.len(),
        out.display()
    );
    Ok(Outcome::Success)
}

/// `whittle synth-model`.
fn cmd_synth_model(
    preset: &str,
    layers: Option<usize>,
    width: Option<&str>,
    dtype: &str,
    seed: u64,
    shard_bytes: u64,
    out: &Path,
) -> Result<Outcome> {
    use whittle::model::synthetic::{write, Preset, SynthSpec};
    let preset = Preset::parse(preset).ok_or_else(|| {
        Usage(format!(
            "--preset `{preset}` is not known: use one of {}",
            Preset::NAMES.join(", ")
        ))
    })?;
    let hidden = match width {
        None => None,
        Some(w) => {
            let parsed = w
                .split_once(':')
                .and_then(|(h, i)| Some((h.parse().ok()?, i.parse().ok()?)))
                .filter(|&(h, i): &(usize, usize)| h > 0 && i > 0 && h % 128 == 0);
            Some(parsed.ok_or_else(|| {
                Usage(format!(
                    "--width `{w}` is not WIDTH:MLP_WIDTH with WIDTH a multiple of 128, e.g. 512:1376"
                ))
            })?)
        }
    };
    let dtype = match dtype {
        "bf16" => candle_core::DType::BF16,
        "f16" => candle_core::DType::F16,
        "f32" => candle_core::DType::F32,
        other => return Err(Usage(format!("--dtype `{other}`: use bf16, f16 or f32")).into()),
    };
    if layers == Some(0) {
        return Err(Usage("--layers must be at least 1".into()).into());
    }
    let spec = SynthSpec {
        preset,
        layers,
        hidden,
        dtype,
        seed,
        shard_bytes,
    };
    let w = write(&spec, out)?;
    outln!(
        "wrote {} parameters ({:.2} GB, {} shards) to {} (random weights: for measurements only)",
        w.parameters,
        w.bytes as f64 / 1e9,
        w.shards,
        out.display()
    );
    Ok(Outcome::Success)
}

/// `cache/` at the root of the git repository holding `start`, or in the current directory.
fn default_cache_dir(start: &Path) -> PathBuf {
    let start = start.canonicalize().unwrap_or_else(|_| start.to_path_buf());
    for dir in start.ancestors() {
        if dir.join(".git").exists() {
            return dir.join("cache");
        }
    }
    PathBuf::from("cache")
}

fn cache_dir(cli: &Cli, near: &Path) -> PathBuf {
    cli.cache_dir.clone().unwrap_or_else(|| {
        let dir = near
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        default_cache_dir(dir)
    })
}

fn load_pipeline(file: &Path) -> Result<whittle::pipeline::spec::Pipeline> {
    whittle::pipeline::load(file).map_err(|diags| {
        eprint!("{diags}");
        anyhow::Error::new(Invalid)
    })
}

fn open(cli: &Cli, file: &Path) -> Result<(Cache, Plan)> {
    let pipeline = load_pipeline(file)?;
    let dir = cache_dir(cli, file);
    let cache =
        Cache::open(&dir).with_context(|| format!("opening the cache at {}", dir.display()))?;
    let hasher = FileHasher::load(&cache)?;
    let plan = plan::build(pipeline, &hasher)?;
    hasher.save()?;
    Ok((cache, plan))
}

/// [`open`] for commands that only read: nothing is created or saved, not even the hash memo.
fn open_read_only(cli: &Cli, file: &Path) -> Result<(Cache, Plan)> {
    let pipeline = load_pipeline(file)?;
    let cache = Cache::open_read_only(&cache_dir(cli, file));
    let hasher = FileHasher::load(&cache)?;
    Ok((cache, plan::build(pipeline, &hasher)?))
}

/// What `run` was asked to do besides "everything": targets, and stages to recompute.
struct Selection<'a> {
    targets: &'a [String],
    force: &'a [String],
}

/// The nodes each name selects; an unknown name is a usage error naming the stages there are.
fn select(plan: &Plan, names: &[String], file: &Path) -> Result<Vec<plan::NodeId>> {
    let mut ids = Vec::new();
    for name in names {
        let found = plan.find(name);
        if found.is_empty() {
            let hint = whittle::pipeline::diag::suggest(
                name.split('[').next().unwrap_or(name),
                plan.pipeline.stages.iter().map(|s| s.name.as_str()),
            );
            return Err(Usage(format!(
                "no stage or instance `{name}` in {}{hint}",
                file.display()
            ))
            .into());
        }
        ids.extend(found);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The plan restricted to the targets (all of it when none are named).
fn selected(plan: Plan, sel: &Selection, file: &Path) -> Result<Plan> {
    if sel.targets.is_empty() {
        return Ok(plan);
    }
    let ids = select(&plan, sel.targets, file)?;
    Ok(plan::restrict(plan, &ids))
}

/// `run --dry-run`: the plan of what `run` would do, with `--force` applied; writes nothing.
fn cmd_dry_run(cli: &Cli, file: &Path, sel: &Selection) -> Result<Outcome> {
    let (cache, plan) = open_read_only(cli, file)?;
    let plan = selected(plan, sel, file)?;
    let forced = select(&plan, sel.force, file)?;
    let history = History::load(&cache, &plan.pipeline.path.display().to_string());
    let mut statuses = plan::resolve(&plan, &cache, &history)?;
    for &i in &forced {
        if let Status::Cached { key_inputs, .. } = &statuses[i] {
            statuses[i] = Status::Run {
                key_inputs: Some(key_inputs.clone()),
                reason: plan::Reason::Forced,
            };
        }
    }
    out!("{}", plan::render(&plan, &statuses, Format::Text));
    Ok(Outcome::Success)
}

fn init_tracing(cli: &Cli, log_file: &Path) -> Result<()> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{filter::LevelFilter, fmt};
    let file = std::fs::File::create(log_file)
        .with_context(|| format!("creating the run log {}", log_file.display()))?;
    let file_layer = fmt::layer()
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .with_filter(LevelFilter::DEBUG);
    let stderr_layer = (cli.verbose > 0).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(if cli.verbose > 1 {
                LevelFilter::DEBUG
            } else {
                LevelFilter::INFO
            })
    });
    // Logs from the libraries underneath stay out unless asked for.
    let only_us = tracing_subscriber::filter::filter_fn(|m| m.target().starts_with("whittle"));
    tracing_subscriber::registry()
        .with(file_layer.with_filter(only_us.clone()))
        .with(stderr_layer.map(|l| l.with_filter(only_us)))
        .try_init()
        .ok();
    Ok(())
}

/// The run's cancel flag. First Ctrl-C: schedule nothing new and stop running stages at their
/// next check. Second: leave at once (entries are atomic, so nothing is left half-written).
fn cancel_on_ctrl_c() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    cancel
}

fn cmd_run(cli: &Cli, file: &Path, opts: &RunOptions, sel: &Selection) -> Result<Outcome> {
    let started = std::time::Instant::now();
    let (cache, plan) = open(cli, file)?;
    let plan = selected(plan, sel, file)?;
    let forced = select(&plan, sel.force, file)?;
    if !forced.is_empty() {
        let history = History::load(&cache, &plan.pipeline.path.display().to_string());
        whittle::exec::force(&plan, &cache, &history, &forced)?;
    }
    let record = RunRecord::start(
        plan.pipeline.path.display().to_string(),
        plan.pipeline.source_digest,
    );
    let log_dir = cache.log_dir(&record.run_id)?;
    init_tracing(cli, &log_dir.join("run.log"))?;
    tracing::info!(pipeline = %plan.pipeline.path.display(), nodes = plan.nodes.len(), "run {}", record.run_id);

    let cancel = cancel_on_ctrl_c();
    let summary = whittle::exec::run(&plan, &cache, opts, &cancel, record)?;

    let ran = summary.count(StageStatus::Ran);
    let cached = summary.count(StageStatus::Cached);
    let failed = summary.count(StageStatus::Failed);
    let skipped = summary.count(StageStatus::Skipped);
    let cancelled = summary.count(StageStatus::Cancelled);

    // Reports, in plan order.
    for (i, node) in plan.nodes.iter().enumerate() {
        if !matches!(node.spec, StageSpec::Report(_)) {
            continue;
        }
        let rec = &summary.record.stages[i];
        let Some(key) = rec.key else { continue };
        if let whittle::cache::Lookup::Hit(entry) = cache.lookup(&key)? {
            let out_dir = report_dir(cli, &plan, &node.stage);
            // Checked as it is copied: a file changed since the run verified it is an error.
            let text = entry.read_verified(whittle::stages::REPORT_TEXT_FILE)?;
            copy_reports(&entry, &out_dir)?;
            let text = String::from_utf8_lossy(&text);
            outln!("\n{}  ({})\n{text}", node.label, out_dir.display());
        }
    }
    outln!(
        "{} stages: {ran} ran, {cached} cached, {failed} failed, {skipped} skipped{} in {:.1}s (run {})",
        plan.nodes.len(),
        if cancelled > 0 { format!(", {cancelled} cancelled") } else { String::new() },
        started.elapsed().as_secs_f64(),
        summary.record.run_id,
    );
    for f in &summary.failures {
        outln!(
            "  failed: {}: {}\n          log: {}",
            f.label,
            f.error,
            f.log.display()
        );
    }
    let unrun = whittle::exec::unrun_report(&summary.record);
    if !unrun.is_empty() {
        eprint!("{unrun}");
    }
    Ok(if summary.interrupted {
        Outcome::Interrupted
    } else if failed > 0 || !unrun.is_empty() {
        Outcome::Failed
    } else {
        Outcome::Success
    })
}

/// `whittle run-node`: one instance, found by label or key, computed into the cache.
fn cmd_run_node(
    cli: &Cli,
    file: &Path,
    node: Option<&str>,
    key: Option<&str>,
    device: &str,
    memory: Option<u64>,
    result: Option<&Path>,
) -> Result<Outcome> {
    let device = DeviceKind::parse(device)?;
    let (cache, plan) = open(cli, file)?;
    let id = match (node, key) {
        (Some(name), _) => match select(&plan, &[name.to_string()], file)?.as_slice() {
            [id] => *id,
            many => {
                return Err(Usage(format!(
                    "`{name}` names {} instances in {}; give one label",
                    many.len(),
                    file.display()
                ))
                .into())
            }
        },
        (None, Some(key)) => node_with_key(&cache, &plan, key, file)?,
        (None, None) => unreachable!("clap requires --node or --key"),
    };
    let cancel = cancel_on_ctrl_c();
    match whittle::exec::run_node(&plan, &cache, id, device, memory, &cancel) {
        Ok(built) => {
            if let Some(path) = result {
                whittle::exec::NodeResult::of(&built)
                    .write(path)
                    .with_context(|| format!("writing the result {}", path.display()))?;
            }
            outln!("{}", built.entry.manifest().key);
            Ok(Outcome::Success)
        }
        Err(whittle::exec::NodeError::Job { source, .. })
            if matches!(*source, whittle::exec::JobError::Cancelled(_)) =>
        {
            Ok(Outcome::Interrupted)
        }
        Err(e) => Err(e.into()),
    }
}

/// The node whose key (as far as the cache lets it be known now) is `key` or starts with it.
fn node_with_key(cache: &Cache, plan: &Plan, key: &str, file: &Path) -> Result<plan::NodeId> {
    let history = History::load(cache, &plan.pipeline.path.display().to_string());
    let statuses = plan::resolve(plan, cache, &history)?;
    let key = key.to_ascii_lowercase();
    let found: Vec<usize> = (0..plan.nodes.len())
        .filter(|&i| statuses[i].key().is_some_and(|k| k.hex().starts_with(&key)))
        .collect();
    match found.as_slice() {
        [id] if !key.is_empty() => Ok(*id),
        [] | [_] => Err(Usage(format!(
            "no instance of {} has key `{key}` (a key is known once its inputs are cached; `whittle plan` shows them)",
            file.display()
        ))
        .into()),
        _ => Err(Usage(format!(
            "key `{key}` is the prefix of {} instances' keys; give more of it",
            found.len()
        ))
        .into()),
    }
}

/// Reports are copied out of the cache to `reports/<pipeline>/<stage>/` at the root of the
/// repository holding the pipeline (or the current directory), or under `--reports-dir`.
/// Both names were checked to be plain folder names, so this stays inside that folder.
fn report_dir(cli: &Cli, plan: &Plan, stage: &str) -> PathBuf {
    let root = cli.reports_dir.clone().unwrap_or_else(|| {
        let start = plan.pipeline.path.parent().unwrap_or(Path::new("."));
        default_cache_dir(start)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
            .join("reports")
    });
    root.join(&plan.pipeline.name).join(stage)
}

/// Copies every file of a report entry, each checked against its recorded hash first.
fn copy_reports(entry: &whittle::cache::Entry, out: &Path) -> Result<()> {
    let mut files = Vec::new();
    for f in &entry.manifest().files {
        files.push((f.path.clone(), entry.read_verified(&f.path)?));
    }
    whittle::stages::report::render::replace_dir(out, |tmp| {
        for (rel, bytes) in &files {
            let dest = tmp.join(rel);
            std::fs::write(&dest, bytes)
                .map_err(|source| ReportError::Io { path: dest, source })?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Whether each node failed in the latest run of the pipeline, itself or through a stage it
/// needs, and is still not cached. Run records keep no key for a failed stage, so a failure
/// counts by instance label unless both keys are known and differ.
fn failed_nodes(plan: &Plan, statuses: &[Status], last: Option<&RunRecord>) -> Vec<bool> {
    let itself: Vec<bool> = plan
        .nodes
        .iter()
        .zip(statuses)
        .map(|(n, s)| {
            let Some(run) = last else { return false };
            !s.is_cached()
                && run.stages.iter().any(|r| {
                    r.instance == n.label
                        && r.status == StageStatus::Failed
                        && (r.key.zip(s.key())).is_none_or(|(a, b)| a == b)
                })
        })
        .collect();
    (0..plan.nodes.len())
        .map(|i| !statuses[i].is_cached() && plan::ancestors(plan, &[i]).iter().any(|&a| itself[a]))
        .collect()
}

fn cmd_report(cli: &Cli, file: &Path, out: Option<&Path>) -> Result<Outcome> {
    use whittle::stages::report::{gather, render, InputState};
    let (cache, plan) = open(cli, file)?;
    let reports: Vec<usize> = (0..plan.nodes.len())
        .filter(|&i| matches!(plan.nodes[i].spec, StageSpec::Report(_)))
        .collect();
    if reports.is_empty() {
        return Err(Usage(format!(
            "{} has no report stage: add one, e.g. `table: {{kind: report, inputs: [<stage>, …]}}`",
            file.display()
        ))
        .into());
    }
    let pipeline = plan.pipeline.path.display().to_string();
    let history = History::load(&cache, &pipeline);
    let statuses = plan::resolve(&plan, &cache, &history)?;
    let failed = failed_nodes(&plan, &statuses, cache.last_run_for(&pipeline).as_ref());
    let state = |id: usize| match &statuses[id] {
        Status::Cached { entry, .. } => InputState::Ready(entry.clone()),
        Status::Run { .. } if failed[id] => InputState::Failed,
        Status::Run { .. } => InputState::Pending,
    };
    let mut missing = 0;
    for &i in &reports {
        let node = &plan.nodes[i];
        let StageSpec::Report(spec) = &node.spec else {
            continue;
        };
        let data = match gather(&plan, i, &state) {
            Ok(d) => d,
            // A damaged entry is a failed read (exit 1), not a usage error.
            Err(e @ ReportError::Cache(_)) => {
                eprintln!("error: {}: {e}", node.label);
                return Ok(Outcome::Failed);
            }
            Err(e) => return Err(e.into()),
        };
        let rendered = render(&data, spec)?;
        let dir = match out {
            Some(d) => d.join(&node.stage),
            None => report_dir(cli, &plan, &node.stage),
        };
        rendered.publish(&dir)?;
        outln!("\n{}  ({})\n{}", node.label, dir.display(), rendered.text);
        missing += data.provenance.points.missing();
    }
    if missing > 0 {
        outln!(
            "{missing} points missing; `whittle run {}` computes what is pending",
            file.display()
        );
    }
    Ok(Outcome::Success)
}

fn cmd_plan(cli: &Cli, file: &Path, format: Format, executor: &ExecutorArgs) -> Result<Outcome> {
    let slurm = executor.slurm()?;
    if slurm.is_some() && format != Format::Text {
        return Err(Usage("`plan --executor slurm` prints text only".into()).into());
    }
    let (cache, plan) = open_read_only(cli, file)?;
    let history = History::load(&cache, &plan.pipeline.path.display().to_string());
    let statuses = plan::resolve(&plan, &cache, &history)?;
    out!("{}", plan::render(&plan, &statuses, format));
    if let Some(profile) = slurm {
        use whittle::exec::slurm::{self, Verdict};
        let needs = whittle::exec::estimate_needs(&plan, None);
        let run: Vec<bool> = statuses.iter().map(|s| !s.is_cached()).collect();
        outln!();
        out!("{}", slurm::dry_run(&plan, &profile, &needs, &run));
        match slurm::check_cache(cache.root()) {
            Verdict::Shared => outln!(
                "cache {}: shared with the compute nodes",
                cache.root().display()
            ),
            Verdict::Warn(m) => outln!("warning: {m}"),
            Verdict::Refuse(m) => outln!("error: a run would refuse: {m}"),
        }
    }
    Ok(Outcome::Success)
}

fn cmd_status(cli: &Cli, file: &Path, format: plan::StatusFormat) -> Result<Outcome> {
    let (cache, plan) = open_read_only(cli, file)?;
    let pipeline = plan.pipeline.path.display().to_string();
    let history = History::load(&cache, &pipeline);
    let statuses = plan::resolve(&plan, &cache, &history)?;
    let last = cache.last_run_for(&pipeline);
    let root = cache.root().display().to_string();
    let summary = plan::StatusSummary::new(&plan, &statuses, &root, last.as_ref());
    out!("{}", summary.render(format));
    Ok(Outcome::Success)
}

fn cmd_export(cli: &Cli, file: &Path, stage: &str, out: &Path) -> Result<Outcome> {
    let (cache, plan) = open(cli, file)?;
    let e = whittle::export::export(&plan, &cache, stage, out)?;
    outln!(
        "exported {} to {}: {} tensors in {}, {:.1} MB{}",
        e.label,
        e.dir.display(),
        e.tensors,
        e.dtype.as_str(),
        e.bytes as f64 / 1e6,
        if e.untied { ", LM head untied" } else { "" }
    );
    if let Some(note) = &e.dtype_note {
        outln!("note: {note}");
    }
    if e.int8_linears > 0 {
        outln!(
            "note: {} linears run as dynamic int8 in whittle; the folder holds their dequantized \
             weights, which transformers runs in floating point",
            e.int8_linears
        );
    }
    Ok(Outcome::Success)
}

fn cmd_why(cli: &Cli, file: &Path, stage: &str) -> Result<Outcome> {
    let (cache, plan) = open_read_only(cli, file)?;
    let ids = plan.find(stage);
    if ids.is_empty() {
        let names: Vec<&str> = plan
            .pipeline
            .stages
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let hint = names
            .iter()
            .min_by_key(|n| strsim::levenshtein(n, stage))
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_default();
        return Err(Usage(format!(
            "no stage or instance `{stage}` in {}{hint}",
            file.display()
        ))
        .into());
    }
    let pipeline = plan.pipeline.path.display().to_string();
    let history = History::load(&cache, &pipeline);
    let statuses = plan::resolve(&plan, &cache, &history)?;
    for i in ids {
        let node = &plan.nodes[i];
        match &statuses[i] {
            Status::Cached { entry, .. } => outln!(
                "{}: cached (key {}, computed {} in {:.1}s)",
                node.label,
                entry.manifest().key.short(),
                entry.manifest().created,
                entry.manifest().duration_s
            ),
            Status::Run { key_inputs, reason } => {
                let key = key_inputs
                    .as_ref()
                    .map_or("pending".to_string(), |k| k.digest().short());
                outln!("{}: will run (key {key}): {reason}", node.label);
                if let plan::Reason::Upstream(_) = reason {
                    // Say what changed at the root of it.
                    for a in plan::ancestors(&plan, &[i]) {
                        if let Status::Run {
                            reason,
                            key_inputs: Some(_),
                        } = &statuses[a]
                        {
                            outln!("  because {}: {reason}", plan.nodes[a].label);
                        }
                    }
                }
            }
        }
    }
    Ok(Outcome::Success)
}

fn parse_older_than(s: &str) -> Result<jiff::Timestamp> {
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        return Ok(ts);
    }
    if let Ok(date) = s.parse::<jiff::civil::Date>() {
        return Ok(date.to_zoned(jiff::tz::TimeZone::UTC)?.timestamp());
    }
    if let Ok(span) = s.parse::<jiff::Span>() {
        return Ok(jiff::Zoned::now().checked_sub(span)?.timestamp());
    }
    Err(Usage(format!(
        "--older-than `{s}`: expected a date (2026-11-01), a timestamp, or a span (7d, 12h)"
    ))
    .into())
}

/// The cache a command on `files` uses: `--cache-dir`, else the one beside the first file, else
/// the one of the current directory.
fn cache_dir_for(cli: &Cli, files: &[PathBuf]) -> PathBuf {
    match (&cli.cache_dir, files.first()) {
        (Some(d), _) => d.clone(),
        (None, Some(f)) => cache_dir(cli, f),
        (None, None) => default_cache_dir(Path::new(".")),
    }
}

fn cmd_verify(cli: &Cli, files: &[PathBuf]) -> Result<Outcome> {
    let dir = cache_dir_for(cli, files);
    if !dir.exists() {
        anyhow::bail!("no cache at {}: nothing to verify", dir.display());
    }
    let cache =
        Cache::open(&dir).with_context(|| format!("opening the cache at {}", dir.display()))?;
    let report = if files.is_empty() {
        cache.verify_all()?
    } else {
        let hasher = FileHasher::load(&cache)?;
        let mut keys = std::collections::BTreeSet::new();
        for f in files {
            let plan = plan::build(load_pipeline(f)?, &hasher)?;
            let history = History::load(&cache, &plan.pipeline.path.display().to_string());
            keys.extend(plan::reachable_keys(&plan, &cache, &history)?);
        }
        hasher.save()?;
        cache.verify_entries(keys)?
    };
    for c in &report.corrupt {
        eprintln!(
            "corrupt: {} {}: {}",
            c.key.short(),
            c.stage.as_deref().unwrap_or("?"),
            c.reason
        );
    }
    outln!(
        "verified {} entries ({:.1} MB): {} ok, {} corrupt{}",
        report.ok + report.corrupt.len(),
        report.bytes as f64 / 1e6,
        report.ok,
        report.corrupt.len(),
        if report.corrupt.is_empty() {
            String::new()
        } else {
            " (moved to quarantine; the next run recomputes them)".to_string()
        }
    );
    Ok(if report.corrupt.is_empty() {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

fn cmd_gc(
    cli: &Cli,
    files: &[PathBuf],
    older_than: Option<&str>,
    dry_run: bool,
) -> Result<Outcome> {
    let older_than = older_than.map(parse_older_than).transpose()?;
    let dir = cache_dir_for(cli, files);
    let cache =
        Cache::open(&dir).with_context(|| format!("opening the cache at {}", dir.display()))?;
    let keep = if files.is_empty() {
        None
    } else {
        let hasher = FileHasher::load(&cache)?;
        let mut keep = std::collections::HashSet::new();
        for f in files {
            let plan = plan::build(load_pipeline(f)?, &hasher)?;
            let history = History::load(&cache, &plan.pipeline.path.display().to_string());
            for s in plan::resolve(&plan, &cache, &history)? {
                if let Status::Cached { entry, .. } = s {
                    keep.insert(entry.manifest().key);
                }
            }
        }
        hasher.save()?;
        Some(keep)
    };
    if keep.is_none() && older_than.is_none() {
        outln!("no pipeline and no --older-than given: only cleaning unfinished writes");
    }
    let report = cache.gc(GcOptions {
        keep,
        older_than,
        dry_run,
    })?;
    let verb = if dry_run { "would remove" } else { "removed" };
    if cli.verbose > 0 {
        for r in &report.removed {
            outln!(
                "{verb} {}  {}  ({:.1} MB)",
                r.key.short(),
                r.stage,
                r.bytes as f64 / 1e6
            );
        }
    }
    if !report.in_use.is_empty() {
        outln!("kept {} entries a running job holds", report.in_use.len());
    }
    outln!(
        "{verb} {} entries ({:.1} MB), kept {}; cleaned {} unfinished writes",
        report.removed.len(),
        report.freed_bytes as f64 / 1e6,
        report.kept,
        report.tmp_cleaned
    );
    Ok(Outcome::Success)
}

/// `--memory` and friends: a byte count with an optional binary unit (`4G`, `512M`).
fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    whittle::pipeline::resources::parse_size(s)
        .ok_or_else(|| format!("`{s}` is not a size: use a number with K, M, G or T, e.g. 4G"))
}
