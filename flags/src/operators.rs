//! flagd's custom JSONLogic operators where flagd's semantics differ from the engine's built-ins:
//! `fractional` (variant entries of any JSON type, as flagd v2 allows) and `starts_with` /
//! `ends_with` (anything but two strings is `null`, never an error).
//!
//! Registered under private names; [`rename`] maps the flagd names onto them when a rule compiles.

use ciborium_ll::{Encoder, Header};

use datalogic_rs::bumpalo::Bump;
use datalogic_rs::bumpalo::collections::String as BumpString;
use datalogic_rs::operator::EvalContext;
use datalogic_rs::{CustomOperator, DataValue, EngineBuilder, Result};

use crate::bucket::{Hashing, murmur};

/// (flagd name, registered name) of every operator this module owns.
pub(crate) const RENAMED: [(&str, &str); 3] =
    [("fractional", "rampart.fractional"), ("starts_with", "rampart.starts_with"), ("ends_with", "rampart.ends_with")];

/// `fractional` with CBOR hashing (`@fractional-v3`), for flag sets that choose it.
const FRACTIONAL_V3: &str = "rampart.fractional_v3";

/// The registered name for a flagd operator name, if this module owns it.
pub(crate) fn rename(op: &str, hashing: Hashing) -> Option<&'static str> {
    if op == "fractional" && hashing == Hashing::Cbor {
        return Some(FRACTIONAL_V3);
    }
    RENAMED.iter().find(|(flagd, _)| *flagd == op).map(|(_, ours)| *ours)
}

pub(crate) fn register(builder: EngineBuilder) -> EngineBuilder {
    builder
        .add_operator(RENAMED[0].1, Fractional { hashing: Hashing::Utf8 })
        .add_operator(FRACTIONAL_V3, Fractional { hashing: Hashing::Cbor })
        .add_operator(RENAMED[1].1, StringAffix { suffix: false })
        .add_operator(RENAMED[2].1, StringAffix { suffix: true })
}

static NULL: DataValue<'static> = DataValue::Null;

/// `{"fractional": [bucketBy?, [variant, weight?], ...]}` as flagd evaluates it: the bucket key is
/// the first argument when it is a string, else `$flagd.flagKey + targetingKey` (no string targeting
/// key → `null`); `murmur3_x86_32(key, 0)` scaled into the total weight picks the entry. With
/// [`Hashing::Cbor`] the hashed bytes are the key's canonical CBOR (`[flagKey, targetingKey]` for
/// the shorthand), as `@fractional-v3` evaluators hash it.
struct Fractional {
    hashing: Hashing,
}

/// `$flagd.flagKey` and `targetingKey` of the context (the targeting key a non-empty string).
fn keys<'a>(root: &'a DataValue<'a>) -> Option<(&'a str, &'a str)> {
    let fields = root.as_object()?;
    let field = |k: &str| fields.iter().find(|(name, _)| *name == k).map(|(_, v)| v);
    let targeting_key = field(crate::context::TARGETING_KEY)?.as_str().filter(|k| !k.is_empty())?;
    let flag_key = field("$flagd")
        .and_then(|f| f.as_object())
        .and_then(|f| f.iter().find(|(k, _)| *k == "flagKey"))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or("");
    Some((flag_key, targeting_key))
}

/// The `@fractional-v3` hash of the bucketing key (the first argument unless it is an entry) and
/// whether the first argument was that key; `None` when there is no usable key.
fn hash_cbor<'a>(first: &'a DataValue<'a>, root: &'a DataValue<'a>) -> Option<(u32, bool)> {
    let mut head = [0u8; 9];
    let header = |h: Header, buf: &mut [u8; 9]| {
        let mut w: &mut [u8] = &mut buf[..];
        // Nine bytes hold any header.
        let _ = Encoder::from(&mut w).push(h);
        9 - w.len()
    };
    match first {
        DataValue::String(s) => {
            let n = header(Header::Text(Some(s.len())), &mut head);
            Some((murmur(&[&head[..n], s.as_bytes()]), true))
        }
        DataValue::Bool(b) => Some((murmur(&[&[if *b { 0xf5 } else { 0xf4 }]]), true)),
        DataValue::Number(num) => {
            let f = num.as_f64();
            let h = match num.as_i64() {
                Some(i) if i >= 0 => Header::Positive(i as u64),
                Some(i) => Header::Negative(!(i as u64)),
                None if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) => {
                    Header::Positive(f as u64)
                }
                None if f.fract() == 0.0 && (-9_223_372_036_854_775_808.0..0.0).contains(&f) => {
                    Header::Negative(!(f as i64 as u64))
                }
                None => Header::Float(f),
            };
            let n = header(h, &mut head);
            Some((murmur(&[&head[..n]]), true))
        }
        DataValue::Array(_) => {
            let (flag_key, targeting_key) = keys(root)?;
            let mut second = [0u8; 9];
            let a = header(Header::Text(Some(flag_key.len())), &mut head);
            let b = header(Header::Text(Some(targeting_key.len())), &mut second);
            let bytes: [&[u8]; 5] = [&[0x82], &head[..a], flag_key.as_bytes(), &second[..b], targeting_key.as_bytes()];
            Some((murmur(&bytes), false))
        }
        _ => None,
    }
}

impl CustomOperator for Fractional {
    fn evaluate<'a>(
        &self,
        args: &[&'a DataValue<'a>],
        ctx: &mut EvalContext<'_, 'a>,
        arena: &'a Bump,
    ) -> Result<&'a DataValue<'a>> {
        if self.hashing == Hashing::Cbor {
            let Some(first) = args.first() else { return Ok(&NULL) };
            let Some((hash, keyed)) = hash_cbor(first, ctx.root_input()) else { return Ok(&NULL) };
            return Ok(pick(hash, if keyed { &args[1..] } else { args }));
        }
        let (key, entries) = match args.first() {
            Some(DataValue::String(s)) => (*s, &args[1..]),
            Some(DataValue::Null) => match implicit_key(ctx.root_input(), arena) {
                Some(k) => (k, &args[1..]),
                None => return Ok(&NULL),
            },
            Some(_) => match implicit_key(ctx.root_input(), arena) {
                Some(k) => (k, args),
                None => return Ok(&NULL),
            },
            None => return Ok(&NULL),
        };
        let hash = murmur(&[key.as_bytes()]);
        Ok(pick(hash, entries))
    }
}

/// The entry whose weight range holds `(hash × total) >> 32`; `null` for malformed entries or a
/// total weight of 0 or above `i32::MAX`.
fn pick<'a>(hash: u32, entries: &[&'a DataValue<'a>]) -> &'a DataValue<'a> {
    let mut total: u64 = 0;
    for entry in entries {
        match weight(entry) {
            Some(w) => total += w,
            None => return &NULL,
        }
    }
    if entries.is_empty() || total == 0 || total > i32::MAX as u64 {
        return &NULL;
    }
    let bucket = (u64::from(hash) * total) >> 32;
    let mut end = 0;
    for entry in entries {
        end += weight(entry).unwrap_or(0);
        if bucket < end {
            return entry.as_array().and_then(|a| a.first()).unwrap_or(&NULL);
        }
    }
    &NULL
}

/// The weight of a `[variant, weight?]` entry: default 1, negatives count as 0; `None` when the
/// entry is malformed (not a non-empty array, or a weight that is not a whole number).
fn weight(entry: &DataValue<'_>) -> Option<u64> {
    let items = entry.as_array().filter(|a| !a.is_empty())?;
    match items.get(1) {
        None => Some(1),
        Some(w) => {
            let f = w.as_f64()?;
            if f.fract() != 0.0 || f > f64::from(i32::MAX) {
                return None;
            }
            // Whole and at most i32::MAX, so the cast is exact.
            Some(f.max(0.0) as u64)
        }
    }
}

/// `$flagd.flagKey + targetingKey`, or `None` without a string targeting key.
fn implicit_key<'a>(root: &'a DataValue<'a>, arena: &'a Bump) -> Option<&'a str> {
    let fields = root.as_object()?;
    let field = |k: &str| fields.iter().find(|(name, _)| *name == k).map(|(_, v)| v);
    let targeting_key = field(crate::context::TARGETING_KEY)?.as_str()?;
    let flag_key = field("$flagd")
        .and_then(|f| f.as_object())
        .and_then(|f| f.iter().find(|(k, _)| *k == "flagKey"))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or("");
    let mut key = BumpString::with_capacity_in(flag_key.len() + targeting_key.len(), arena);
    key.push_str(flag_key);
    key.push_str(targeting_key);
    Some(key.into_bump_str())
}

/// `starts_with` / `ends_with`: exactly two strings, case-sensitive; anything else is `null`.
struct StringAffix {
    suffix: bool,
}

static TRUE: DataValue<'static> = DataValue::Bool(true);
static FALSE: DataValue<'static> = DataValue::Bool(false);

impl CustomOperator for StringAffix {
    fn evaluate<'a>(
        &self,
        args: &[&'a DataValue<'a>],
        _ctx: &mut EvalContext<'_, 'a>,
        _arena: &'a Bump,
    ) -> Result<&'a DataValue<'a>> {
        let [DataValue::String(s), DataValue::String(affix)] = args else { return Ok(&NULL) };
        let hit = if self.suffix { s.ends_with(affix) } else { s.starts_with(affix) };
        Ok(if hit { &TRUE } else { &FALSE })
    }
}
