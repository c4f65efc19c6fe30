//! `pacsgrid audit search` and `pacsgrid audit verify`: the audit trail from the command line.
//! Scripts rely on their output and exit codes: keep them stable.

use anyhow::Context;
use clap::{Args, Subcommand};
use pacsgrid_audit::{parse_since, verify, EventKind, Filter, Record, Search, LOG_FILE};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `pacsgrid audit ...`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Prints the audit records that match every given filter, oldest first.
    Search(SearchArgs),
    /// Checks the log's hash chain; exits 0 when intact, 1 naming the first bad record.
    Verify {
        /// Data directory (the log is DATA/audit/audit.log).
        #[arg(long, env = "PACSGRID_DATA", default_value = "./pacsgrid-data")]
        data: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Filters and output format of `pacsgrid audit search`.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Data directory (the log is DATA/audit/audit.log).
    #[arg(long, env = "PACSGRID_DATA", default_value = "./pacsgrid-data")]
    data: PathBuf,
    /// PatientID (matches under every issuer).
    #[arg(long)]
    patient: Option<String>,
    /// StudyInstanceUID.
    #[arg(long)]
    study: Option<String>,
    /// User id or AE title the event is attributed to.
    #[arg(long)]
    user: Option<String>,
    /// Only events at or after this time: RFC 3339, or YYYY-MM-DD (midnight UTC).
    #[arg(long)]
    since: Option<String>,
    /// Event name.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(EventKind::NAMES))]
    event: Option<String>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Include each record's DICOM audit message (XML) in the JSON.
    #[arg(long)]
    xml: bool,
}

/// Runs an audit subcommand.
pub fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Search(args) => search(args),
        AuditCommand::Verify { data, json } => verify_log(&data, json),
    }
}

fn log_path(data: &Path) -> anyhow::Result<PathBuf> {
    let p = data.join("audit").join(LOG_FILE);
    if !p.exists() {
        anyhow::bail!("no audit log at {}", p.display());
    }
    Ok(p)
}

/// A record as printed: the stored fields, the XML only on request.
#[derive(Serialize)]
struct Printed<'a> {
    seq: u64,
    time: &'a str,
    event: &'a str,
    outcome: u8,
    user: Option<&'a str>,
    patient_id: Option<&'a str>,
    patient_issuer: Option<&'a str>,
    study_uids: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    xml: Option<&'a str>,
    prev: &'a str,
    hash: Option<&'a str>,
}

fn search(args: SearchArgs) -> anyhow::Result<ExitCode> {
    let path = log_path(&args.data)?;
    let since = args
        .since
        .as_deref()
        .map(parse_since)
        .transpose()
        .context("--since")?;
    let filter = Filter {
        patient: args.patient,
        study: args.study,
        user: args.user,
        since,
        event: args.event,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if !args.json {
        let _ = writeln!(
            out,
            "{:>8}  {:<24}  {:<21}  {:>3}  {:<16}  {:<16}  STUDIES",
            "SEQ", "TIME", "EVENT", "OUT", "USER", "PATIENT"
        );
    }
    let mut bad_lines = 0u64;
    for item in Search::open(&path, filter)? {
        let rec = match item {
            Ok(r) => r,
            Err(e) => {
                bad_lines += 1;
                eprintln!("pacsgrid: warning: {}: {e}", path.display());
                continue;
            }
        };
        let written = if args.json {
            print_json(&mut out, &rec, args.xml)
        } else {
            writeln!(
                out,
                "{:>8}  {:<24}  {:<21}  {:>3}  {:<16}  {:<16}  {}",
                rec.seq,
                rec.time,
                rec.event,
                rec.outcome,
                rec.user.as_deref().unwrap_or("-"),
                rec.patient_id.as_deref().unwrap_or("-"),
                rec.study_uids.join(",")
            )
        };
        if let Err(e) = written {
            // A reader such as `head` that has seen enough is not an error.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    if bad_lines > 0 {
        eprintln!(
            "pacsgrid: warning: {bad_lines} line(s) are not records; run `pacsgrid audit verify`"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json(out: &mut impl Write, rec: &Record, with_xml: bool) -> std::io::Result<()> {
    let p = Printed {
        seq: rec.seq,
        time: &rec.time,
        event: &rec.event,
        outcome: rec.outcome,
        user: rec.user.as_deref(),
        patient_id: rec.patient_id.as_deref(),
        patient_issuer: rec.patient_issuer.as_deref(),
        study_uids: &rec.study_uids,
        xml: with_xml.then_some(rec.xml.as_str()),
        prev: &rec.prev,
        hash: rec.hash.as_deref(),
    };
    serde_json::to_writer(&mut *out, &p)?;
    out.write_all(b"\n")
}

fn verify_log(data: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let path = log_path(data)?;
    let report = verify(&path)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        match &report.first_bad {
            None => println!(
                "audit log intact: {} records (last seq {}, last hash {})",
                report.records,
                report.last_seq.map_or("-".into(), |s| s.to_string()),
                report.last_hash.as_deref().unwrap_or("-"),
            ),
            Some(bad) => println!(
                "audit log broken at line {} (seq {}): {}; the {} records before it are intact",
                bad.line,
                bad.seq.map_or("unreadable".into(), |s| s.to_string()),
                bad.reason,
                report.records
            ),
        }
    }
    Ok(if report.is_intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
