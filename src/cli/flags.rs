//! `rampart check` and `rampart eval`: validate a flag file (strictly: any problem fails); evaluate
//! one flag from the command line from the file loaded as a sidecar loads it (a flag whose rules
//! cannot compile answers `PARSE_ERROR`, the others evaluate).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use rampart_flags::{Bump, Context, FlagSet, Reason};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// The flag-definition file.
    file: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct EvalArgs {
    /// The flag-definition file.
    file: PathBuf,
    /// The flag key.
    flag: String,
    /// Evaluation context as a JSON object, e.g. '{"targetingKey":"u1","email":"a@b.c"}'.
    #[arg(long, default_value = "{}")]
    context: String,
}

/// Prints `ok` (exit 0), or every located error on stderr (exit 1).
pub(crate) fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    match FlagSet::from_file(&args.file) {
        Ok(_) => {
            println!("ok");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Prints `{"flag", "variant", "value", "reason", "metadata"}` (plus `errorCode` on an error
/// reason); `metadata` is the flag set's metadata overridden by the flag's own, as flagd merges it.
pub(crate) fn eval(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let set = match FlagSet::from_file_tolerant(&args.file) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let context: Value = serde_json::from_str(&args.context).context("--context is not valid JSON")?;
    let arena = Bump::new();
    let ctx = Context::from_json(&context, &arena).context("--context")?;
    let Some(flag) = set.get(&args.flag) else {
        bail!("FLAG_NOT_FOUND: flag \"{}\" is not defined in {}", args.flag, args.file.display());
    };
    let own = format!("flags.{}.", args.flag);
    for problem in set.quarantined().iter().filter(|p| p.path.starts_with(&own)) {
        eprintln!("{}: {problem}", args.file.display());
    }
    let r = flag.evaluate(&ctx, &arena);
    let mut metadata = set.metadata().clone();
    metadata.extend(flag.metadata().iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut out = json!({
        "flag": args.flag,
        "variant": r.variant_name(),
        "value": r.value(),
        "reason": r.reason.as_str(),
        "metadata": metadata,
    });
    if let (Reason::Error, Some(code)) = (r.reason, r.error) {
        out["errorCode"] = json!(code.as_str());
    }
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}
