//! Consistent assignments across hops: a sidecar signs the variants it assigned into one header,
//! `v1.<expiry>.<flag=variant,…>.<HMAC-SHA256, base64url>`, and the next sidecar holding the same
//! key reuses them instead of evaluating; an override token (`o1.…`, same format) forces variants.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use metrics::Counter;
use rampart_flags::{Bump, FlagSet};
use sha2::Sha256;

use crate::config::Propagation;
use crate::metrics::Metrics;
use crate::snapshot::Injected;

/// The default header of the assignments a hop forwards.
pub const ASSIGNMENTS_HEADER: &str = "x-rampart-assignments";
/// The default header of a QA override token.
pub const OVERRIDE_HEADER: &str = "x-rampart-override";
/// The shortest shared secret accepted: HMAC-SHA256's output size.
pub const MIN_KEY_LEN: usize = 32;
/// A base64url (unpadded) HMAC-SHA256 tag.
const TAG_LEN: usize = 43;

/// A shared secret, with the HMAC key state prepared once: signing or verifying clones it.
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the key is {len} bytes; at least {MIN_KEY_LEN} are needed")]
    Short { len: usize },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Key {
    pub fn new(secret: &[u8]) -> Result<Key, KeyError> {
        let short = KeyError::Short { len: secret.len() };
        if secret.len() < MIN_KEY_LEN {
            return Err(short);
        }
        Hmac::<Sha256>::new_from_slice(secret).map(Key).map_err(|_| short)
    }

    /// The key in `path`: its bytes less trailing whitespace (the newline `echo` or an editor adds).
    pub fn from_file(path: &Path) -> Result<Key, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
        Key::new(&bytes[..end])
    }
}

/// What a token says; its prefix is signed too, so one kind never passes for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `v1.`: the assignments of an upstream hop.
    Assignments,
    /// `o1.`: variants forced by QA, ahead of evaluation and of an upstream hop's assignments.
    Override,
}

impl Kind {
    fn prefix(self) -> &'static [u8] {
        match self {
            Kind::Assignments => b"v1",
            Kind::Override => b"o1",
        }
    }
}

/// Why an incoming token was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("not a signed token")]
    Unsigned,
    #[error("malformed")]
    Malformed,
    #[error("the signature does not match (tampered, or another key)")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not accepted by this sidecar's configuration")]
    Untrusted,
}

impl Reject {
    const ALL: [Reject; 5] =
        [Reject::Unsigned, Reject::Malformed, Reject::Signature, Reject::Expired, Reject::Untrusted];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Unsigned => "unsigned",
            Reject::Malformed => "malformed",
            Reject::Signature => "signature",
            Reject::Expired => "expired",
            Reject::Untrusted => "untrusted",
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A token of `kind` carrying `pairs` (flag, variant) until `expiry` (Unix seconds).
pub fn sign(key: &Key, kind: Kind, expiry: u64, pairs: &[(&str, &str)]) -> String {
    let body_len =
        pairs.iter().map(|(f, v)| encoded_len(f) + 1 + encoded_len(v)).sum::<usize>() + pairs.len().saturating_sub(1);
    let token = seal(key, kind, expiry, body_len, |out| {
        for (i, (flag, variant)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            encode(out, flag);
            out.push(b'=');
            encode(out, variant);
        }
    });
    String::from_utf8_lossy(&token).into_owned()
}

/// The token `<kind>.<expiry>.<body>.<tag>`, `body` writing exactly `body_len` bytes: one
/// allocation of the exact size (so it becomes a `Bytes` without another).
fn seal(key: &Key, kind: Kind, expiry: u64, body_len: usize, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut digits = [0u8; 20];
    let digits = decimal(expiry, &mut digits);
    let len = kind.prefix().len() + 1 + digits.len() + 1 + body_len + 1 + TAG_LEN;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(kind.prefix());
    out.push(b'.');
    out.extend_from_slice(digits);
    out.push(b'.');
    body(&mut out);
    let mut mac = key.0.clone();
    mac.update(&out);
    let tag = mac.finalize().into_bytes();
    out.push(b'.');
    let start = out.len();
    out.resize(start + TAG_LEN, 0);
    let written = URL_SAFE_NO_PAD.encode_slice(tag, &mut out[start..]).unwrap_or(0);
    debug_assert_eq!((written, out.len()), (TAG_LEN, len));
    out
}

/// `n` in decimal, in `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// The body (`flag=variant,…`, encoded) of a genuine, unexpired token of `kind`. The tag is
/// checked (in constant time) before anything the token says is believed.
pub fn open<'t>(key: &Key, kind: Kind, token: &'t [u8], now: u64) -> Result<&'t [u8], Reject> {
    let rest = token.strip_prefix(kind.prefix()).and_then(|r| r.strip_prefix(b".")).ok_or(Reject::Unsigned)?;
    let dot = rest.iter().position(|&b| b == b'.').ok_or(Reject::Unsigned)?;
    let (expiry, rest) = (&rest[..dot], &rest[dot + 1..]);
    let last = rest.iter().rposition(|&b| b == b'.').ok_or(Reject::Unsigned)?;
    let (body, tag) = (&rest[..last], &rest[last + 1..]);
    if tag.len() != TAG_LEN {
        return Err(Reject::Malformed);
    }
    let mut raw = [0u8; 48];
    let n = URL_SAFE_NO_PAD.decode_slice(tag, &mut raw).map_err(|_| Reject::Malformed)?;
    let expiry = parse_decimal(expiry).ok_or(Reject::Malformed)?;
    let mut mac = key.0.clone();
    mac.update(&token[..token.len() - TAG_LEN - 1]);
    mac.verify_slice(&raw[..n]).map_err(|_| Reject::Signature)?;
    if expiry < now {
        return Err(Reject::Expired);
    }
    Ok(body)
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The encoded `(flag, variant)` pairs of a token body.
pub fn pairs(body: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    body.split(|&b| b == b',').filter_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        Some((&pair[..eq], &pair[eq + 1..]))
    })
}

/// Bytes a header value cannot hold, and the separators: percent-encoded.
fn escaped(b: u8) -> bool {
    !b.is_ascii_graphic() || matches!(b, b'%' | b',' | b'=')
}

fn encoded_len(s: &str) -> usize {
    s.bytes().map(|b| if escaped(b) { 3 } else { 1 }).sum()
}

/// Appends `s` percent-encoded (canonical: upper-case hex, only what must be), so the encoded
/// bytes of a name are always the same and can be looked up as they are.
fn encode(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if escaped(b) {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            out.push(b);
        }
    }
}

/// Without `[propagation]` nothing here can vouch for either header: neither reaches the upstream.
pub(crate) fn strip_unconfigured(headers: &mut HeaderMap) {
    const ASSIGNMENTS: HeaderName = HeaderName::from_static(ASSIGNMENTS_HEADER);
    const OVERRIDE: HeaderName = HeaderName::from_static(OVERRIDE_HEADER);
    // A pass over the names first: neither is usually there, and a removal hashes the name.
    if headers.keys().any(|k| *k == ASSIGNMENTS || *k == OVERRIDE) {
        headers.remove(ASSIGNMENTS);
        headers.remove(OVERRIDE);
    }
}

/// Encoded variant name → variant index.
type Variants = HashMap<Box<[u8]>, usize>;

/// Propagation as one snapshot serves it: the settings, and per injected flag its encoded key and
/// encoded `flag=variant` pairs, so a request looks pairs up by their bytes as received and emits
/// precomputed bytes.
#[derive(Debug)]
pub(crate) struct Prepared {
    settings: Propagation,
    /// Encoded flag key → its injected index and encoded variant name → variant index. A disabled
    /// flag has no variants here: a kill switch is never bypassed by a token.
    lookup: HashMap<Box<[u8]>, (usize, Variants)>,
    /// By injected index, then variant index: the encoded `flag=variant`.
    pairs: Vec<Vec<Box<[u8]>>>,
    /// By injected index: assignments reused from an upstream hop, variants forced by an override.
    reused: Vec<Counter>,
    overridden: Vec<Counter>,
    /// By `Reject::ALL` index.
    rejected: Vec<Counter>,
    overrides_rejected: Vec<Counter>,
}

/// What a request's propagation headers gave: per injected flag, a variant that is not to be
/// evaluated; and the verified incoming assignments, whose flags unknown here travel on.
#[derive(Debug, Default)]
pub(crate) struct Received<'a> {
    /// By injected index: `(variant index, forced by an override)`.
    given: &'a [Option<(usize, bool)>],
    carried: Option<HeaderValue>,
}

impl Received<'_> {
    /// The variant given for injected flag `i`, if any.
    pub(crate) fn given(&self, i: usize) -> Option<usize> {
        self.given.get(i).copied().flatten().map(|(v, _)| v)
    }
}

impl Prepared {
    pub(crate) fn build(settings: &Propagation, flags: &FlagSet, injected: &[Injected], metrics: &Metrics) -> Prepared {
        let encoded = |s: &str| {
            let mut out = Vec::with_capacity(encoded_len(s));
            encode(&mut out, s);
            out.into_boxed_slice()
        };
        let mut lookup = HashMap::new();
        let mut pairs = Vec::new();
        let (mut reused, mut overridden) = (Vec::new(), Vec::new());
        for (i, inj) in injected.iter().enumerate() {
            let flag = &flags.flags()[inj.flag];
            let variants = flag.variants().iter().filter(|_| flag.enabled());
            lookup.insert(encoded(flag.key()), (i, variants.map(|v| (encoded(v.name()), v.index())).collect()));
            let pair = |v: &rampart_flags::Variant| [&*encoded(flag.key()), b"=", &*encoded(v.name())].concat();
            pairs.push(flag.variants().iter().map(|v| pair(v).into_boxed_slice()).collect());
            reused.push(metrics.per_flag("rampart_assignments_reused_total", flag.key()));
            overridden.push(metrics.per_flag("rampart_overrides_applied_total", flag.key()));
        }
        let by_reason =
            |name| Reject::ALL.iter().map(|r| metrics.labelled(name, "reason", r.label())).collect::<Vec<_>>();
        Prepared {
            settings: settings.clone(),
            lookup,
            pairs,
            reused,
            overridden,
            rejected: by_reason("rampart_assignments_rejected_total"),
            overrides_rejected: by_reason("rampart_overrides_rejected_total"),
        }
    }

    /// Takes the propagation headers off the request: verified tokens give variants (an override
    /// over an upstream hop's), anything else is removed and counted. A valid override stays on
    /// the request when this sidecar emits; the assignments header never does (`emit` signs anew).
    /// Touches nothing and allocates nothing when neither header is present.
    pub(crate) fn receive<'a>(&self, headers: &mut HeaderMap, arena: &'a Bump) -> Received<'a> {
        let s = &self.settings;
        let (assigned, forced) = (headers.contains_key(&s.header), headers.contains_key(&s.override_header));
        if !assigned && !forced {
            return Received::default();
        }
        let now = unix_now();
        let given = arena.alloc_slice_fill_copy(self.pairs.len(), None);
        let mut carried = None;
        if assigned {
            let duplicate = headers.get_all(&s.header).iter().nth(1).is_some();
            let value = headers.remove(&s.header);
            let verdict = match &value {
                _ if !s.trust => Err(Reject::Untrusted),
                _ if duplicate => Err(Reject::Malformed),
                Some(v) => {
                    open(&s.key, Kind::Assignments, v.as_bytes(), now).map(|body| self.apply(body, given, false))
                }
                None => Err(Reject::Malformed),
            };
            match verdict {
                Ok(()) => carried = value,
                Err(reason) => self.reject(&self.rejected, reason, "assignments"),
            }
        }
        if forced {
            let duplicate = headers.get_all(&s.override_header).iter().nth(1).is_some();
            let verdict = match headers.get(&s.override_header) {
                _ if !s.overrides => Err(Reject::Untrusted),
                _ if duplicate => Err(Reject::Malformed),
                Some(v) => open(&s.key, Kind::Override, v.as_bytes(), now).map(|body| self.apply(body, given, true)),
                None => Err(Reject::Malformed),
            };
            if let Err(reason) = verdict {
                self.reject(&self.overrides_rejected, reason, "override");
            }
            if verdict.is_err() || !s.emit {
                headers.remove(&s.override_header);
            }
        }
        for (i, g) in given.iter().enumerate() {
            match g {
                Some((_, false)) => self.reused[i].increment(1),
                Some((_, true)) => self.overridden[i].increment(1),
                None => {}
            }
        }
        Received { given, carried }
    }

    fn apply(&self, body: &[u8], given: &mut [Option<(usize, bool)>], forced: bool) {
        for (flag, variant) in pairs(body) {
            if let Some((i, variants)) = self.lookup.get(flag)
                && let Some(&v) = variants.get(variant)
            {
                given[*i] = Some((v, forced));
            }
        }
    }

    fn reject(&self, counters: &[Counter], reason: Reject, header: &'static str) {
        if let Some(i) = Reject::ALL.iter().position(|r| *r == reason) {
            counters[i].increment(1);
        }
        tracing::debug!(header, reason = reason.label(), "propagation header removed");
    }

    /// Adds the signed assignments of this request (`chosen`, by injected index), plus the verified
    /// incoming pairs of flags this sidecar does not inject, when `emit` is on. One allocation.
    pub(crate) fn emit(&self, headers: &mut HeaderMap, chosen: &[Option<usize>], received: &Received<'_>) {
        if !self.settings.emit {
            return;
        }
        let ours = || chosen.iter().enumerate().filter_map(|(i, c)| self.pairs.get(i)?.get((*c)?));
        let body = received.carried.as_ref().and_then(|v| {
            // Verified in `receive`; the time no longer matters.
            open(&self.settings.key, Kind::Assignments, v.as_bytes(), 0).ok()
        });
        let foreign = || pairs(body.unwrap_or_default()).filter(|(flag, _)| !self.lookup.contains_key(*flag));
        let (mut len, mut count) = (0, 0);
        for p in ours() {
            (len, count) = (len + p.len(), count + 1);
        }
        for (f, v) in foreign() {
            (len, count) = (len + f.len() + 1 + v.len(), count + 1);
        }
        if count == 0 {
            return;
        }
        let expiry = unix_now().saturating_add(self.settings.ttl.as_secs());
        let token = seal(&self.settings.key, Kind::Assignments, expiry, len + count - 1, |out| {
            let mut first = true;
            let mut sep = |out: &mut Vec<u8>| {
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
            };
            for p in ours() {
                sep(out);
                out.extend_from_slice(p);
            }
            for (f, v) in foreign() {
                sep(out);
                out.extend_from_slice(f);
                out.push(b'=');
                out.extend_from_slice(v);
            }
        });
        match HeaderValue::from_maybe_shared(Bytes::from(token)) {
            Ok(value) => {
                headers.insert(self.settings.header.clone(), value);
            }
            Err(e) => tracing::warn!(error = %e, "cannot emit the assignments header"),
        }
    }
}

#[cfg(test)]
mod tests;
