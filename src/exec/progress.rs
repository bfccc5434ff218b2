//! Progress display: one bar for the whole run, one per running stage.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Ui {
    multi: MultiProgress,
    overall: ProgressBar,
}

impl Ui {
    /// `visible: false` draws nothing (tests, pipes, `--quiet`).
    pub fn new(total: u64, visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(total));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{bar:30.green/white}] {pos}/{len} stages  {elapsed_precise} (eta {eta}) {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        overall.set_prefix("whittle");
        overall.enable_steady_tick(Duration::from_millis(200));
        Ui { multi, overall }
    }

    pub fn stage_bar(&self, label: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template(
                "  {spinner} {prefix:40!} [{bar:20.cyan/white}] {pos}/{len}  eta {eta}  {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    pub fn done(&self, n: u64) {
        self.overall.inc(n);
    }

    /// Counts `n` stages counted done as not done again (a corrupt entry is being recomputed).
    pub fn undo(&self, n: u64) {
        self.overall.dec(n);
    }

    /// Prints a line above the bars.
    pub fn println(&self, line: &str) {
        if self.multi.is_hidden() {
            return;
        }
        let _ = self.multi.println(line);
    }

    pub fn finish(&self) {
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }
}
