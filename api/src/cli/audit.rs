//! `herald events export` and `import`, `herald audit verify` and `herald
//! audit checkpoint`: the log for auditors, and its restore.

use std::io::{BufRead, Write};
use std::time::Instant;

use herald_nats::log::chain::{self, AuditEntry, Checkpoint, Verification};
use herald_nats::log::restore::{Restore, RestoreError};
use sqlx::PgPool;

use super::{progress_bar, took, BoxError};
use crate::config::{DatabaseArgs, ExportArgs, ImportArgs, VerifyArgs};
use crate::db::existing_pool;

/// Entries read per query while exporting.
const EXPORT_BATCH: i64 = 1000;

/// Writes the log after `--after` as NDJSON to stdout.
pub(super) async fn export(args: ExportArgs) -> Result<(), BoxError> {
    let pool = existing_pool(&args.database).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut position = args.after;
    loop {
        let entries = chain::entries_after(&pool, position, EXPORT_BATCH, None).await?;
        let Some(last) = entries.last().map(|e| e.entry.position) else {
            break;
        };
        for entry in &entries {
            let written = serde_json::to_writer(&mut out, entry)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            if let Err(err) = written {
                return reader_gone(err);
            }
        }
        position = last;
    }
    out.flush().or_else(reader_gone)
}

/// Restores an export into an empty database and prints its head.
pub(super) async fn import(args: ImportArgs) -> Result<(), BoxError> {
    let pool = existing_pool(&args.database).await?;
    let input: Box<dyn BufRead> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(|err| format!("{}: {err}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let bar = progress_bar("import", "{prefix} {pos} entries, {rate}");
    let started = Instant::now();
    let mut restore = Restore::begin(&pool, args.expect).await?;
    for (line, position) in input.lines().zip(1..) {
        let entry: AuditEntry =
            serde_json::from_str(&line?).map_err(|err| RestoreError::Broken {
                position,
                reason: format!("line {position} is not an exported entry: {err}"),
            })?;
        restore.push(entry).await?;
        bar.set_position(position as u64);
    }
    let verification = restore.commit().await?;
    bar.finish_and_clear();
    eprintln!(
        "restored {}; `herald up` builds the read models from them",
        took(verification.events_checked, started)
    );
    if let Some(head) = verification.head {
        println!("{head}");
    }
    Ok(())
}

/// A reader that stopped reading (`herald events export | head`) has all it
/// wanted: that is the end of the export, not an error.
fn reader_gone(err: std::io::Error) -> Result<(), BoxError> {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(err.into())
    }
}

/// Verifies the chains with a progress bar.
async fn verified(pool: &PgPool, expect: Option<Checkpoint>) -> Result<Verification, BoxError> {
    let bar = progress_bar(
        "verify",
        "{prefix} [{bar:30}] {pos}/{len} entries, {rate}, ETA {eta}",
    );
    let started = Instant::now();
    let verification = chain::verify(pool, expect, |checked, total| {
        bar.set_length(total as u64);
        bar.set_position(checked as u64);
    })
    .await?;
    bar.finish_and_clear();
    eprintln!("verified {}", took(verification.events_checked, started));
    Ok(verification)
}

/// Prints the verification as JSON; fails when the log was tampered with.
pub(super) async fn verify(args: VerifyArgs) -> Result<(), BoxError> {
    let pool = existing_pool(&args.database).await?;
    let verification = verified(&pool, args.expect).await?;
    println!("{}", serde_json::to_string(&verification)?);
    match verification.first_bad_position {
        None => Ok(()),
        Some(position) => Err(format!(
            "the log is not intact at position {position}: {}",
            verification.reason.unwrap_or_default()
        )
        .into()),
    }
}

/// Prints the head of a verified chain as `<position>:<hash>`.
pub(super) async fn checkpoint(args: DatabaseArgs) -> Result<(), BoxError> {
    let pool = existing_pool(&args).await?;
    let verification = verified(&pool, None).await?;
    if let Some(position) = verification.first_bad_position {
        return Err(format!(
            "the log is not intact at position {position}, so it has no head to keep: {}",
            verification.reason.unwrap_or_default()
        )
        .into());
    }
    match verification.head {
        Some(head) => {
            println!("{head}");
            Ok(())
        }
        None => Err("the log is empty: there is no head to keep yet".into()),
    }
}
