//! `rampart flag create|list|show|stale|archive` and `rampart deploy record`: flags as a platform
//! primitive (owners, lifecycle) and deployments recorded from the pipeline, over the control
//! plane's HTTP API.

use std::process::ExitCode;

use anyhow::Context as _;
use http::Method;
use serde_json::{Value, json};

use super::http::{DEFAULT_CONTROL_PLANE, call, expect_ok};

#[derive(Debug, clap::Args)]
pub(crate) struct FlagArgs {
    #[command(subcommand)]
    command: FlagCommand,
    /// The control plane's HTTP API.
    #[arg(long, global = true, env = "RAMPART_CONTROL_PLANE", default_value = DEFAULT_CONTROL_PLANE)]
    control_plane: String,
}

#[derive(Debug, clap::Subcommand)]
enum FlagCommand {
    /// Add a flag through the control plane (validated, versioned, pushed to every sidecar).
    Create {
        key: String,
        /// The team that owns it.
        #[arg(long)]
        owner: String,
        #[arg(long)]
        description: Option<String>,
        /// Variants as name=value (values are JSON, else strings), e.g. on=true,off=false.
        #[arg(long, value_delimiter = ',', default_value = "on=true,off=false")]
        variants: Vec<String>,
        /// The default variant.
        #[arg(long, default_value = "off")]
        default: String,
        /// How long it is expected to live, e.g. 90d: past that, once launched, it is stale.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Every flag with its owner and lifecycle stage.
    List {
        /// Only flags in this stage: new, ramping, launched, stale, archived.
        #[arg(long)]
        stage: Option<String>,
        /// The stages as they will be (or were) at this time (RFC 3339).
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One flag: its definition and lifecycle.
    Show {
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// What can be removed: stale and archived flags, by owner, with when they were last evaluated.
    Stale {
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Archive a flag: it is served as its default and listed as removable until removed.
    Archive { key: String },
}

#[derive(Debug, clap::Args)]
pub(crate) struct DeployArgs {
    #[command(subcommand)]
    command: DeployCommand,
    #[arg(long, global = true, env = "RAMPART_CONTROL_PLANE", default_value = DEFAULT_CONTROL_PLANE)]
    control_plane: String,
}

#[derive(Debug, clap::Subcommand)]
enum DeployCommand {
    /// Record a deployment from the pipeline; a ramp started for one of its flags takes its commit.
    Record {
        #[arg(long)]
        service: String,
        #[arg(long)]
        commit: String,
        /// When the commit was made (RFC 3339), e.g. `git show -s --format=%cI`.
        #[arg(long)]
        commit_time: String,
        /// The pull request's URL.
        #[arg(long)]
        pr: Option<String>,
        /// The flags this deployment ships behind.
        #[arg(long, value_delimiter = ',')]
        flags: Vec<String>,
    },
    /// The deployments recorded lately, newest first.
    List {
        #[arg(long, default_value = "30d")]
        window: String,
        #[arg(long)]
        json: bool,
    },
}

/// `name=value` pairs: a JSON value when it parses as one, else a string.
fn variants(pairs: &[String]) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for pair in pairs {
        let (name, value) = pair.split_once('=').with_context(|| format!("variant \"{pair}\": expected name=value"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        out.insert(name.to_owned(), value);
    }
    Ok(Value::Object(out))
}

fn ago(ms: Option<i64>, now: i64) -> String {
    match ms {
        None => "never".to_owned(),
        Some(t) => {
            let d = (now - t) as f64 / 86_400_000.0;
            if d >= 1.0 { format!("{d:.0} days ago") } else { format!("{:.0} h ago", (now - t) as f64 / 3_600_000.0) }
        }
    }
}

fn lifecycle(base: &str, at: Option<&str>, stage: Option<&str>) -> anyhow::Result<Value> {
    let mut query = Vec::new();
    if let Some(at) = at {
        query.push(format!("at={}", form_urlencoded::byte_serialize(at.as_bytes()).collect::<String>()));
    }
    if let Some(stage) = stage {
        query.push(format!("stage={stage}"));
    }
    let path = format!("/api/v1/flags/lifecycle?{}", query.join("&"));
    expect_ok(call(Method::GET, base, &path, None)?)
}

pub(crate) fn flag(args: &FlagArgs) -> anyhow::Result<ExitCode> {
    let base = args.control_plane.as_str();
    match &args.command {
        FlagCommand::Create { key, owner, description, variants: pairs, default, expires } => {
            let body = json!({"owner": owner, "description": description, "variants": variants(pairs)?,
                              "default": default, "expires": expires});
            let body = Value::Object(
                body.as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
            let path = format!("/api/v1/flags/{}", form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>());
            let answer = expect_ok(call(Method::POST, base, &path, Some(&body))?)?;
            println!("created {key} (owner {owner}) in flags version {}", answer["version"]);
        }
        FlagCommand::List { stage, at, json } => {
            let answer = lifecycle(base, at.as_deref(), stage.as_deref())?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(ExitCode::SUCCESS);
            }
            let now = answer["at_ms"].as_i64().unwrap_or(0);
            for f in answer["flags"].as_array().into_iter().flatten() {
                println!(
                    "{:<28} {:<9} {:<16} evaluated {:<14} {}",
                    f["flag"].as_str().unwrap_or("?"),
                    f["stage"].as_str().unwrap_or("?"),
                    f["owner"].as_str().unwrap_or("(no owner)"),
                    ago(f["last_evaluated_ms"].as_i64(), now),
                    f["reason"].as_str().unwrap_or("")
                );
            }
        }
        FlagCommand::Show { key, json } => {
            let flags = expect_ok(call(Method::GET, base, "/api/v1/flags", None)?)?;
            let definition = flags["flags"]["flags"].get(key).cloned().with_context(|| format!("no flag \"{key}\""))?;
            let life = lifecycle(base, None, None)?;
            let life = life["flags"].as_array().into_iter().flatten().find(|f| f["flag"] == key.as_str()).cloned();
            let out = json!({"flag": key, "version": flags["version"], "definition": definition, "lifecycle": life});
            if *json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let l = out["lifecycle"].clone();
                println!("{key}: {} — {}", l["stage"].as_str().unwrap_or("?"), l["reason"].as_str().unwrap_or(""));
                println!("  owner        {}", l["owner"].as_str().unwrap_or("(none)"));
                if let Some(d) = l["description"].as_str() {
                    println!("  description  {d}");
                }
                println!("  definition   {}", serde_json::to_string(&definition)?);
            }
        }
        FlagCommand::Stale { at, json } => {
            let answer = lifecycle(base, at.as_deref(), None)?;
            let now = answer["at_ms"].as_i64().unwrap_or(0);
            let mut removable: Vec<&Value> = answer["flags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| matches!(f["stage"].as_str(), Some("stale" | "archived")))
                .collect();
            removable.sort_by_key(|f| {
                (f["owner"].as_str().unwrap_or("").to_owned(), f["flag"].as_str().unwrap_or("").to_owned())
            });
            if *json {
                println!("{}", serde_json::to_string_pretty(&json!({"at_ms": now, "flags": removable}))?);
                return Ok(ExitCode::SUCCESS);
            }
            if removable.is_empty() {
                println!("no stale or archived flags");
            }
            let mut owner = None;
            for f in removable {
                let this = f["owner"].as_str().unwrap_or("(no owner)");
                if owner != Some(this) {
                    println!("{this}:");
                    owner = Some(this);
                }
                println!(
                    "  {:<28} {:<9} last evaluated {:<14} {}",
                    f["flag"].as_str().unwrap_or("?"),
                    f["stage"].as_str().unwrap_or("?"),
                    ago(f["last_evaluated_ms"].as_i64(), now),
                    f["reason"].as_str().unwrap_or("")
                );
            }
        }
        FlagCommand::Archive { key } => {
            let path = format!(
                "/api/v1/flags/{}/archive",
                form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>()
            );
            let answer = expect_ok(call(Method::POST, base, &path, None)?)?;
            println!("archived {key} in flags version {}", answer["version"]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn deploy(args: &DeployArgs) -> anyhow::Result<ExitCode> {
    let base = args.control_plane.as_str();
    match &args.command {
        DeployCommand::Record { service, commit, commit_time, pr, flags } => {
            let mut body = json!({"service": service, "commit": commit, "commit_time": commit_time, "flags": flags});
            if let Some(pr) = pr {
                body["pr"] = json!(pr);
            }
            let answer = expect_ok(call(Method::POST, base, "/api/v1/deployments", Some(&body))?)?;
            println!("recorded deployment {} of {service} at {commit}", answer["id"]);
        }
        DeployCommand::List { window, json } => {
            let answer = expect_ok(call(Method::GET, base, &format!("/api/v1/deployments?window={window}"), None)?)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(ExitCode::SUCCESS);
            }
            for d in answer["deployments"].as_array().into_iter().flatten() {
                println!(
                    "{:>5}  {:<16} {:<12} flags {}",
                    d["id"],
                    d["service"].as_str().unwrap_or("?"),
                    d["commit"].as_str().unwrap_or("?"),
                    d["flags"]
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
