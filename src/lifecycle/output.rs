//! How a lifecycle command speaks: a progress bar and readable lines on a terminal, one JSON
//! summary line otherwise (a Cloud Run Job's log), and an exit code that a scheduler can read.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// How a command ended, when it ran to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything checked out, or was done.
    Clean,
    /// The command finished, and found something an operator must look at.
    Findings,
}

impl Outcome {
    /// 0 clean, 1 findings; a failure to run is 3 and bad usage 2 (see `main`).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Clean => 0,
            Self::Findings => 1,
        }
    }
}

/// One thing an operator must look at, named by its document (or input line).
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `collection/id`, or `line N` of an input file.
    pub subject: String,
    pub problem: String,
}

/// One change a command made (or would make, in a dry run).
#[derive(Debug, Clone, Serialize)]
pub struct ChangeLine {
    pub subject: String,
    pub change: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary<'a> {
    command: &'a str,
    dry_run: bool,
    outcome: &'a str,
    counts: &'a BTreeMap<&'static str, u64>,
    elapsed_seconds: f64,
    findings_total: u64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    findings: &'a [Finding],
    changes_total: u64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    changes: &'a [ChangeLine],
}

/// The report of one run: counts, findings and changes, shown as they come on a terminal and
/// summed up at the end.
pub struct Report {
    command: &'static str,
    dry_run: bool,
    terminal: bool,
    progress: ProgressBar,
    started: Instant,
    counts: BTreeMap<&'static str, u64>,
    /// The most findings and changes the summary lists (all are counted).
    list_limit: usize,
    findings: Vec<Finding>,
    findings_total: u64,
    changes: Vec<ChangeLine>,
    changes_total: u64,
}

impl Report {
    pub fn new(command: &'static str, dry_run: bool, list_limit: usize) -> Self {
        let terminal = std::io::stdout().is_terminal();
        let progress = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {human_pos} documents ({per_sec})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(command);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        } else {
            ProgressBar::hidden()
        };
        Self {
            command,
            dry_run,
            terminal,
            progress,
            started: Instant::now(),
            counts: BTreeMap::new(),
            list_limit,
            findings: Vec::new(),
            findings_total: 0,
            changes: Vec::new(),
            changes_total: 0,
        }
    }

    /// Counts `n` more of `what` (`documentsRead`, `deleted`, …).
    pub fn count(&mut self, what: &'static str, n: u64) {
        *self.counts.entry(what).or_default() += n;
    }

    /// Moves the progress bar on by `n` documents.
    pub fn advance(&self, n: u64) {
        self.progress.inc(n);
    }

    pub fn finding(&mut self, subject: String, problem: String) {
        self.findings_total += 1;
        if self.terminal {
            self.progress
                .suspend(|| println!("finding: {subject}: {problem}"));
        } else if self.findings.len() < self.list_limit {
            self.findings.push(Finding { subject, problem });
        }
    }

    pub fn change(&mut self, subject: String, change: String) {
        self.changes_total += 1;
        if self.terminal {
            let verb = if self.dry_run {
                "would change"
            } else {
                "change"
            };
            self.progress
                .suspend(|| println!("{verb}: {subject}: {change}"));
        } else if self.changes.len() < self.list_limit {
            self.changes.push(ChangeLine { subject, change });
        }
    }

    /// Ends the progress bar and prints the summary.
    pub fn finish(self) -> Outcome {
        self.progress.finish_and_clear();
        let outcome = if self.findings_total == 0 {
            Outcome::Clean
        } else {
            Outcome::Findings
        };
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut stdout = std::io::stdout().lock();
        if self.terminal {
            let dry = if self.dry_run { " (dry run)" } else { "" };
            let _ = writeln!(stdout, "{}{dry}: done in {elapsed:.1} s", self.command);
            for (what, n) in &self.counts {
                let _ = writeln!(stdout, "  {what}: {n}");
            }
            let _ = writeln!(stdout, "  findings: {}", self.findings_total);
            let _ = writeln!(stdout, "  changes: {}", self.changes_total);
        } else {
            let summary = Summary {
                command: self.command,
                dry_run: self.dry_run,
                outcome: match outcome {
                    Outcome::Clean => "clean",
                    Outcome::Findings => "findings",
                },
                counts: &self.counts,
                elapsed_seconds: (elapsed * 1000.0).round() / 1000.0,
                findings_total: self.findings_total,
                findings: &self.findings,
                changes_total: self.changes_total,
                changes: &self.changes,
            };
            if let Ok(line) = serde_json::to_string(&summary) {
                let _ = writeln!(stdout, "{line}");
            }
        }
        outcome
    }
}
