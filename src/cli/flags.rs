//! `rampart check` and `rampart eval`: validate a flag file; evaluate one flag from the command line.

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

/// Prints `{"flag", "variant", "value", "reason"}` (plus `errorCode` on an error reason).
pub(crate) fn eval(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let set = match FlagSet::from_file(&args.file) {
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
    let r = flag.evaluate(&ctx, &arena);
    let mut out = json!({
        "flag": args.flag,
        "variant": r.variant_name(),
        "value": r.value(),
        "reason": r.reason.as_str(),
    });
    if let (Reason::Error, Some(code)) = (r.reason, r.error) {
        out["errorCode"] = json!(code.as_str());
    }
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}
