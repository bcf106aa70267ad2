//! `rampart sign`: a QA override token for `x-rampart-override`, which forces variants on every
//! sidecar that holds the same `[propagation]` key, until it expires.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rampart_proxy::propagate::{Key, Kind, sign, unix_now};

#[derive(Debug, clap::Args)]
pub(crate) struct SignArgs {
    /// The shared propagation key, the file the sidecars' `[propagation] key_file` names.
    #[arg(long)]
    key_file: PathBuf,
    /// How long the token is accepted.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The variants to force.
    #[arg(required = true, value_name = "FLAG=VARIANT")]
    assignments: Vec<String>,
}

/// Prints the token; use it as `x-rampart-override: <token>`.
pub(crate) fn run(args: &SignArgs) -> anyhow::Result<ExitCode> {
    println!("{}", token(args)?);
    Ok(ExitCode::SUCCESS)
}

fn token(args: &SignArgs) -> anyhow::Result<String> {
    let key = Key::from_file(&args.key_file).with_context(|| format!("--key-file {}", args.key_file.display()))?;
    let pairs = args.assignments.iter().map(|a| pair(a)).collect::<anyhow::Result<Vec<_>>>()?;
    if args.ttl < Duration::from_secs(1) {
        bail!("--ttl must be at least 1s");
    }
    Ok(sign(&key, Kind::Override, unix_now().saturating_add(args.ttl.as_secs()), &pairs))
}

fn pair(text: &str) -> anyhow::Result<(&str, &str)> {
    match text.split_once('=') {
        Some((flag, variant)) if !flag.is_empty() && !variant.is_empty() => Ok((flag, variant)),
        _ => bail!("\"{text}\" is not FLAG=VARIANT"),
    }
}

#[cfg(test)]
mod tests {
    use rampart_proxy::propagate::{open, pairs};

    use super::*;

    #[test]
    fn signs_an_override_the_sidecars_accept() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "0123456789abcdef0123456789abcdef\n").unwrap();
        let args = |assignments: &[&str]| SignArgs {
            key_file: key_file.clone(),
            ttl: Duration::from_secs(3600),
            assignments: assignments.iter().map(|a| (*a).to_owned()).collect(),
        };
        let signed = token(&args(&["new-checkout=on", "color=dark blue"])).unwrap();
        let key = Key::from_file(&key_file).unwrap();
        let body = open(&key, Kind::Override, signed.as_bytes(), unix_now() + 3599).unwrap();
        let got: Vec<_> = pairs(body).collect();
        assert_eq!(got, [(&b"new-checkout"[..], &b"on"[..]), (b"color", b"dark%20blue")]);
        assert!(open(&key, Kind::Override, signed.as_bytes(), unix_now() + 3601).is_err(), "expires");
        assert!(token(&args(&["new-checkout"])).unwrap_err().to_string().contains("is not FLAG=VARIANT"));
        std::fs::write(&key_file, "short").unwrap();
        let e = format!("{:#}", token(&args(&["a=b"])).unwrap_err());
        assert!(e.contains("--key-file") && e.contains("at least 32"), "{e}");
    }
}
