//! `archive`: moves month documents older than the history retention to cold storage. Per
//! month, a gzip-compressed NDJSON file (the format of `export`, so `import` restores it), then
//! a manifest with its count and checksum, written last. The month's documents are deleted only
//! once the file has been read back and found whole, each on the condition that it is
//! unchanged since it was archived; a changed one is kept and reported.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::sync::Arc;

use anyhow::Context;
use chrono::{Months, NaiveDate, Utc};
use chrono_tz::Tz;
use clap::Args;
use flate2::Compression;
use flate2::write::{GzDecoder, GzEncoder};
use futures_util::StreamExt;
use object_store::buffered::BufWriter as ObjectWriter;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::audit::Operator;
use super::ndjson;
use super::output::{Outcome, Report};
use super::scope::YearMonth;
use super::store::{
    Applied, Change, Collection, Condition, Document, DocumentStore, DocumentWrite,
    MAX_WRITES_PER_COMMIT, Scan, Version,
};
use super::{PAGE_SIZE, Pages, subject};
use crate::usage::{AuditAction, DayWindow, month_start};

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// Where the archives go: a local directory, or `gs://bucket/prefix` (Application Default
    /// Credentials).
    #[arg(long, env = "ARCHIVE_DESTINATION")]
    pub destination: String,
    /// Months of history kept in the store, the current one included; older months are
    /// archived.
    #[arg(long, env = "HISTORY_RETENTION_MONTHS", default_value_t = 24, value_parser = clap::value_parser!(u32).range(12..=1200))]
    pub history_retention_months: u32,
    /// The IANA time zone in which a day starts and ends.
    #[arg(long, env = "RESET_TIMEZONE", default_value = "UTC")]
    pub reset_timezone: Tz,
    /// Show which months would be archived, and write and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub operator: Operator,
    /// The most findings the JSON summary lists (all are counted, and a terminal shows all).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

/// The first month kept: `retention` months back from the current one, which counts as one.
pub fn keep_from(today: NaiveDate, retention_months: u32) -> YearMonth {
    YearMonth::of(
        month_start(today)
            .checked_sub_months(Months::new(retention_months.saturating_sub(1)))
            .unwrap_or(NaiveDate::MIN),
    )
}

/// A destination: an object store and the prefix under it.
struct Destination {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl Destination {
    fn parse(raw: &str) -> anyhow::Result<Self> {
        if let Some(rest) = raw.strip_prefix("gs://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            anyhow::ensure!(
                !bucket.is_empty(),
                "gs:// needs a bucket: gs://bucket/prefix"
            );
            let store = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .build()
                .context("cannot reach Cloud Storage")?;
            return Ok(Self {
                store: Arc::new(store),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        std::fs::create_dir_all(raw).with_context(|| format!("cannot create {raw}"))?;
        let store = LocalFileSystem::new_with_prefix(raw)
            .with_context(|| format!("cannot use {raw} as an archive"))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: String::new(),
        })
    }

    fn path(&self, name: &str) -> ObjectPath {
        match self.prefix.as_str() {
            "" => ObjectPath::from(name),
            prefix => ObjectPath::from(format!("{prefix}/{name}")),
        }
    }
}

/// What the manifest of one archived month says.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    collection: &'static str,
    month: String,
    file: &'a str,
    documents: u64,
    bytes: u64,
    sha256: &'a str,
    archived_at: String,
}

pub async fn run(args: &ArchiveArgs, store: &dyn DocumentStore) -> anyhow::Result<Outcome> {
    let mut report = Report::new("archive", args.dry_run, args.limit);
    let today = DayWindow::containing(Utc::now(), args.reset_timezone).date;
    let keep_from = keep_from(today, args.history_retention_months);
    let months = months_before(keep_from, store, &mut report).await?;
    if args.dry_run {
        for month in &months {
            report.change(
                format!("{}/{month}", Collection::History.name()),
                "would be archived".to_owned(),
            );
        }
        return Ok(report.finish());
    }
    let destination = Destination::parse(&args.destination)?;
    let run = Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    for month in months {
        archive_month(
            month,
            &run,
            &destination,
            &args.operator,
            store,
            &mut report,
        )
        .await?;
    }
    Ok(report.finish())
}

/// The months older than `keep_from` that have documents, read from one pass over the
/// collection (only the months are kept in memory).
async fn months_before(
    keep_from: YearMonth,
    store: &dyn DocumentStore,
    report: &mut Report,
) -> anyhow::Result<BTreeSet<YearMonth>> {
    let scan = Scan::Collection {
        collection: Collection::History,
        user: None,
    };
    let mut months = BTreeSet::new();
    let mut pages = Pages::new(store, scan);
    while let Some(page) = pages.next(PAGE_SIZE).await? {
        report.advance(page.len() as u64);
        for stored in &page {
            match &stored.content {
                Ok(Document::Month(month)) => {
                    let of = YearMonth {
                        year: month.year,
                        month: month.month,
                    };
                    if of < keep_from {
                        months.insert(of);
                    }
                }
                _ => report.finding(
                    subject(Collection::History, &stored.id),
                    "not archived: it does not decode".to_owned(),
                ),
            }
        }
    }
    Ok(months)
}

async fn archive_month(
    month: YearMonth,
    run: &str,
    destination: &Destination,
    operator: &Operator,
    store: &dyn DocumentStore,
    report: &mut Report,
) -> anyhow::Result<()> {
    let work = tempfile::tempdir().context("cannot create a working directory")?;
    let (archive_file, ledger_file) = (work.path().join("archive.gz"), work.path().join("ledger"));
    let documents = write_month(month, store, &archive_file, &ledger_file).await?;
    if documents == 0 {
        return Ok(());
    }
    let name = format!("{}/{month}/{run}.ndjson.gz", Collection::History.name());
    let path = destination.path(&name);
    let (bytes, sha256) = upload(&archive_file, &path, destination).await?;
    let (read_bytes, read_sha256, read_documents) = read_back(&path, destination).await?;
    anyhow::ensure!(
        (read_bytes, read_sha256.as_str(), read_documents) == (bytes, sha256.as_str(), documents),
        "{name} read back differs from what was written ({read_documents} documents, \
         {read_bytes} bytes, sha256 {read_sha256}); nothing was deleted"
    );
    let manifest = Manifest {
        collection: Collection::History.name(),
        month: month.to_string(),
        file: name.rsplit('/').next().unwrap_or(&name),
        documents,
        bytes,
        sha256: &sha256,
        archived_at: Utc::now().to_rfc3339(),
    };
    let manifest_path = destination.path(&format!(
        "{}/{month}/{run}.manifest.json",
        Collection::History.name()
    ));
    destination
        .store
        .put(&manifest_path, serde_json::to_vec_pretty(&manifest)?.into())
        .await
        .with_context(|| format!("cannot write {manifest_path}"))?;
    report.count("monthsArchived", 1);
    report.count("documentsArchived", documents);
    report.change(
        format!("{}/{month}", Collection::History.name()),
        format!("{documents} documents archived to {name} (sha256 {sha256})"),
    );
    delete_archived(&ledger_file, operator, store, report).await
}

/// Writes the month's documents to a gzip file and their ids and versions to a ledger;
/// returns how many.
async fn write_month(
    month: YearMonth,
    store: &dyn DocumentStore,
    archive_file: &std::path::Path,
    ledger_file: &std::path::Path,
) -> anyhow::Result<u64> {
    let mut archive = GzEncoder::new(
        BufWriter::new(File::create(archive_file)?),
        Compression::default(),
    );
    let mut ledger = BufWriter::new(File::create(ledger_file)?);
    let scan = Scan::Month {
        year: month.year,
        month: month.month,
    };
    let mut documents = 0;
    let mut pages = Pages::new(store, scan);
    while let Some(page) = pages.next(PAGE_SIZE).await? {
        for stored in &page {
            if let Ok(document) = &stored.content {
                writeln!(archive, "{}", ndjson::encode(&stored.id, document)?)?;
                writeln!(ledger, "{}\t{}", stored.version.0, stored.id)?;
                documents += 1;
            }
        }
    }
    archive.finish()?.flush()?;
    ledger.flush()?;
    Ok(documents)
}

/// Uploads the file in chunks; its size and SHA-256 (hex).
async fn upload(
    file: &std::path::Path,
    path: &ObjectPath,
    destination: &Destination,
) -> anyhow::Result<(u64, String)> {
    let mut reader = BufReader::new(File::open(file)?);
    let mut writer = ObjectWriter::new(destination.store.clone(), path.clone());
    let (mut hasher, mut bytes) = (Sha256::new(), 0_u64);
    let mut chunk = vec![0; 1 << 20];
    loop {
        let read = reader.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        hasher.update(&chunk[..read]);
        bytes += read as u64;
        writer.write_all(&chunk[..read]).await?;
    }
    writer
        .shutdown()
        .await
        .with_context(|| format!("cannot write {path}"))?;
    Ok((bytes, hex(&hasher.finalize())))
}

/// Reads the file back as stored: its size, SHA-256, and how many lines decode (any line
/// that does not fails the archive).
async fn read_back(
    path: &ObjectPath,
    destination: &Destination,
) -> anyhow::Result<(u64, String, u64)> {
    let mut stream = destination
        .store
        .get(path)
        .await
        .with_context(|| format!("cannot read {path} back"))?
        .into_stream();
    let (mut hasher, mut bytes) = (Sha256::new(), 0_u64);
    let mut lines = GzDecoder::new(LineCheck::default());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("cannot read {path} back"))?;
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
        lines.write_all(&chunk)?;
    }
    let check = lines.finish()?;
    anyhow::ensure!(
        check.partial.is_empty(),
        "{path} ends in the middle of a line"
    );
    Ok((bytes, hex(&hasher.finalize()), check.lines))
}

/// Counts the lines written to it, each of which must decode.
#[derive(Default)]
struct LineCheck {
    partial: Vec<u8>,
    lines: u64,
}

impl Write for LineCheck {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        for &byte in buffer {
            if byte != b'\n' {
                self.partial.push(byte);
                continue;
            }
            let line = std::str::from_utf8(&self.partial).map_err(std::io::Error::other)?;
            ndjson::decode(line).map_err(std::io::Error::other)?;
            self.partial.clear();
            self.lines += 1;
        }
        Ok(buffer.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Deletes the archived documents, a commit at a time, each if unchanged since archived.
async fn delete_archived(
    ledger_file: &std::path::Path,
    operator: &Operator,
    store: &dyn DocumentStore,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut batch = Vec::new();
    for line in BufReader::new(File::open(ledger_file)?).lines() {
        let line = line?;
        let (version, id) = line.split_once('\t').context("a broken ledger line")?;
        batch.push(DocumentWrite {
            collection: Collection::History,
            id: id.to_owned(),
            change: Change::Delete,
            condition: Condition::Unchanged(Version(version.to_owned())),
        });
        if batch.len() == MAX_WRITES_PER_COMMIT {
            delete_batch(std::mem::take(&mut batch), operator, store, report).await?;
        }
    }
    if !batch.is_empty() {
        delete_batch(batch, operator, store, report).await?;
    }
    Ok(())
}

async fn delete_batch(
    batch: Vec<DocumentWrite>,
    operator: &Operator,
    store: &dyn DocumentStore,
    report: &mut Report,
) -> anyhow::Result<()> {
    let count = batch.len() as u64;
    let audit = operator.entry(AuditAction::MonthsArchived, &batch);
    if store.apply(batch.clone(), &audit).await? == Applied::All {
        report.count("documentsDeleted", count);
        return Ok(());
    }
    // Some document changed since it was archived: delete the others one by one.
    for write in batch {
        let id = write.id.clone();
        let write = vec![write];
        let audit = operator.entry(AuditAction::MonthsArchived, &write);
        if store.apply(write, &audit).await? == Applied::All {
            report.count("documentsDeleted", 1);
        } else {
            report.finding(
                subject(Collection::History, &id),
                "kept: it changed after it was archived; archive again to move it".to_owned(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retention_counts_the_current_month() {
        let today: NaiveDate = "2026-11-29".parse().unwrap();
        assert_eq!(
            keep_from(today, 24),
            YearMonth {
                year: 2024,
                month: 12
            }
        );
        assert_eq!(
            keep_from(today, 12),
            YearMonth {
                year: 2025,
                month: 12
            }
        );
    }
}
