//! `export` and `import`: both collections as NDJSON (see [`super::ndjson`]), streamed page by
//! page and line by line, so that memory stays flat however many documents there are.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use clap::{Args, ValueEnum};
use flate2::read::MultiGzDecoder;

use super::audit::Operator;
use super::check::problems;
use super::ndjson;
use super::output::{Outcome, Report};
use super::store::{
    Applied, Change, Collection, Condition, Document, DocumentStore, DocumentWrite,
    MAX_WRITES_PER_COMMIT, Scan, Stored,
};
use super::{PAGE_SIZE, Pages, retry_pauses, subject};
use crate::usage::{AuditAction, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CollectionArg {
    #[value(name = "daily_token_usage")]
    Daily,
    #[value(name = "token_usage_history")]
    History,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The NDJSON file to write (written beside it as `.partial`, renamed when complete).
    #[arg(long)]
    pub output: PathBuf,
    /// Only this collection [default: both].
    #[arg(long, value_enum)]
    pub collection: Option<CollectionArg>,
    /// Only this user's documents.
    #[arg(long, value_parser = |raw: &str| UserId::parse(raw).map_err(|e| e.to_string()))]
    pub user: Option<UserId>,
    /// Count what would be exported, and write no file.
    #[arg(long)]
    pub dry_run: bool,
    /// The most findings the JSON summary lists (all are counted, and a terminal shows all).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The NDJSON file to read, as `export` writes it (or `archive`, gzip-compressed).
    #[arg(long)]
    pub input: PathBuf,
    /// Replace stored documents even when they are newer than the file's, or do not decode.
    #[arg(long)]
    pub overwrite: bool,
    /// Check the file and count what would be written, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The most findings the JSON summary lists (all are counted, and a terminal shows all).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    #[command(flatten)]
    pub operator: Operator,
}

pub async fn export(args: &ExportArgs, store: &dyn DocumentStore) -> anyhow::Result<Outcome> {
    let mut report = Report::new("export", args.dry_run, args.limit);
    let partial = partial_path(&args.output);
    let mut out: Box<dyn Write> = if args.dry_run {
        Box::new(std::io::sink())
    } else {
        let file = File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        Box::new(BufWriter::new(file))
    };
    let collections = match args.collection {
        None => Collection::ALL.to_vec(),
        Some(CollectionArg::Daily) => vec![Collection::Daily],
        Some(CollectionArg::History) => vec![Collection::History],
    };
    for collection in collections {
        let scan = Scan::Collection {
            collection,
            user: args.user.clone(),
        };
        let mut pages = Pages::new(store, scan);
        while let Some(page) = pages.next(PAGE_SIZE).await? {
            report.advance(page.len() as u64);
            for stored in &page {
                match &stored.content {
                    Ok(document) => {
                        writeln!(out, "{}", ndjson::encode(&stored.id, document)?)?;
                        report.count("documentsExported", 1);
                    }
                    Err(why) => report.finding(
                        subject(collection, &stored.id),
                        format!("not exported: it does not decode: {why}"),
                    ),
                }
            }
        }
    }
    if !args.dry_run {
        out.flush().context("cannot write the export")?;
        drop(out);
        File::open(&partial)
            .and_then(|file| file.sync_all())
            .context("cannot flush the export")?;
        std::fs::rename(&partial, &args.output)
            .with_context(|| format!("cannot rename {} into place", partial.display()))?;
    }
    Ok(report.finish())
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// One valid line of the input.
struct Incoming {
    line: u64,
    id: String,
    document: Document,
}

pub async fn import(args: &ImportArgs, store: &dyn DocumentStore) -> anyhow::Result<Outcome> {
    let mut report = Report::new("import", args.dry_run, args.limit);
    // Every line is checked before anything is written: one bad line writes nothing.
    let mut bad_lines = false;
    for line in lines_of(&args.input)? {
        let (number, line) = line?;
        report.advance(1);
        match validate(&line) {
            Ok(Some(_)) => report.count("linesValid", 1),
            Ok(None) => {}
            Err(problem) => {
                bad_lines = true;
                report.finding(format!("line {number}"), problem);
            }
        }
    }
    if bad_lines {
        return Ok(report.finish());
    }
    let mut batch: Vec<Incoming> = Vec::new();
    for line in lines_of(&args.input)? {
        let (number, line) = line?;
        if let Some((id, document)) = validate(&line).map_err(anyhow::Error::msg)? {
            batch.push(Incoming {
                line: number,
                id,
                document,
            });
        }
        if batch.len() == MAX_WRITES_PER_COMMIT {
            import_batch(std::mem::take(&mut batch), args, store, &mut report).await?;
        }
    }
    if !batch.is_empty() {
        import_batch(batch, args, store, &mut report).await?;
    }
    Ok(report.finish())
}

/// A line's document, `None` for a blank line, or why the line cannot be imported.
fn validate(line: &str) -> Result<Option<(String, Document)>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let (id, document) = ndjson::decode(line)?;
    let found = problems(&id, &document);
    if found.is_empty() {
        Ok(Some((id, document)))
    } else {
        Err(found.join("; "))
    }
}

type NumberedLines = Box<dyn Iterator<Item = anyhow::Result<(u64, String)>>>;

/// The numbered lines of an NDJSON file, gzip-compressed (`.gz`, as `archive` writes) or not.
fn lines_of(path: &Path) -> anyhow::Result<NumberedLines> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader: Box<dyn BufRead> = if path.extension().is_some_and(|ext| ext == "gz") {
        Box::new(BufReader::new(MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let path = path.display().to_string();
    Ok(Box::new(reader.lines().zip(1..).map(
        move |(line, number)| {
            line.map(|line| (number, line))
                .with_context(|| format!("cannot read line {number} of {path}"))
        },
    )))
}

async fn import_batch(
    batch: Vec<Incoming>,
    args: &ImportArgs,
    store: &dyn DocumentStore,
    report: &mut Report,
) -> anyhow::Result<()> {
    // A document named twice in one batch is imported as its last line says.
    let mut latest: BTreeMap<(Collection, String), Incoming> = BTreeMap::new();
    for incoming in batch {
        latest.insert(
            (incoming.document.collection(), incoming.id.clone()),
            incoming,
        );
    }
    let mut pauses = retry_pauses();
    loop {
        let mut stored: HashMap<(Collection, String), Stored> = HashMap::new();
        for collection in Collection::ALL {
            let ids: Vec<String> = latest
                .keys()
                .filter(|(c, _)| *c == collection)
                .map(|(_, id)| id.clone())
                .collect();
            if !ids.is_empty() {
                for found in store.get(collection, &ids).await? {
                    stored.insert((collection, found.id.clone()), found);
                }
            }
        }
        let plan = plan_batch(&latest, &stored, args.overwrite);
        if args.dry_run || plan.writes.is_empty() {
            plan.tell(report);
            return Ok(());
        }
        let audit = args
            .operator
            .entry(AuditAction::DocumentsImported, &plan.writes);
        if store.apply(plan.writes.clone(), &audit).await? == Applied::All {
            plan.tell(report);
            return Ok(());
        }
        report.count("retriesAfterConcurrentWrites", 1);
        let Some(pause) = pauses.next() else {
            anyhow::bail!("the store kept changing under the import; run it again")
        };
        tokio::time::sleep(pause).await;
    }
}

/// What one batch writes, and what it reports.
struct BatchPlan {
    writes: Vec<DocumentWrite>,
    counts: Vec<&'static str>,
    findings: Vec<(String, String)>,
}

impl BatchPlan {
    fn tell(self, report: &mut Report) {
        for what in self.counts {
            report.count(what, 1);
        }
        for (subject, problem) in self.findings {
            report.finding(subject, problem);
        }
    }
}

fn plan_batch(
    latest: &BTreeMap<(Collection, String), Incoming>,
    stored: &HashMap<(Collection, String), Stored>,
    overwrite: bool,
) -> BatchPlan {
    let mut plan = BatchPlan {
        writes: Vec::new(),
        counts: Vec::new(),
        findings: Vec::new(),
    };
    for (key, incoming) in latest {
        let (collection, id) = key;
        let condition = match stored.get(key) {
            None => {
                plan.counts.push("documentsCreated");
                Condition::Missing
            }
            Some(existing) => {
                let refusal = match &existing.content {
                    Ok(current) if same(current, &incoming.document) => {
                        plan.counts.push("documentsUnchanged");
                        continue;
                    }
                    Ok(current) if !overwrite && newer(current, &incoming.document) => {
                        Some(format!(
                            "kept: the stored document is newer ({}) than line {} ({}); --overwrite replaces it",
                            current.updated().to_rfc3339(),
                            incoming.line,
                            incoming.document.updated().to_rfc3339()
                        ))
                    }
                    Err(why) if !overwrite => Some(format!(
                        "kept: the stored document does not decode ({why}); --overwrite replaces it"
                    )),
                    _ => None,
                };
                if let Some(refusal) = refusal {
                    plan.findings.push((subject(*collection, id), refusal));
                    continue;
                }
                plan.counts.push("documentsReplaced");
                Condition::Unchanged(existing.version.clone())
            }
        };
        plan.writes.push(DocumentWrite {
            collection: *collection,
            id: id.clone(),
            change: Change::Put(incoming.document.clone()),
            condition,
        });
    }
    plan
}

/// Firestore keeps timestamps to the microsecond: a document read back from it is the same
/// as the one written with nanoseconds.
fn to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

fn normalized(document: &Document) -> Document {
    match document.clone() {
        Document::Day(mut day) => {
            day.usage.last_updated = to_micros(day.usage.last_updated);
            day.usage.reset_at = to_micros(day.usage.reset_at);
            Document::Day(day)
        }
        Document::Month(mut month) => {
            month.created_at = to_micros(month.created_at);
            month.updated_at = to_micros(month.updated_at);
            Document::Month(month)
        }
    }
}

fn same(stored: &Document, incoming: &Document) -> bool {
    normalized(stored) == normalized(incoming)
}

fn newer(stored: &Document, incoming: &Document) -> bool {
    to_micros(stored.updated()) > to_micros(incoming.updated())
}
