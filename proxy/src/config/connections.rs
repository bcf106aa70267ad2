//! `[connections]`: how long a client may leave a connection in each state before the sidecar
//! closes it, and how many connections one address may hold; `[headers]`: how the request head is
//! cleaned. Validated at load like the rest of the configuration.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// `[connections]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnections {
    #[serde(default = "defaults::first_byte", with = "humantime_serde")]
    first_byte_timeout: Duration,
    #[serde(default = "defaults::idle", with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(default = "defaults::body_idle", with = "humantime_serde")]
    body_idle_timeout: Duration,
    #[serde(default = "defaults::h2_ping_interval", with = "humantime_serde")]
    h2_ping_interval: Duration,
    #[serde(default = "defaults::h2_ping_timeout", with = "humantime_serde")]
    h2_ping_timeout: Duration,
    #[serde(default)]
    max_per_address: usize,
}

impl Default for RawConnections {
    fn default() -> Self {
        RawConnections {
            first_byte_timeout: defaults::first_byte(),
            idle_timeout: defaults::idle(),
            body_idle_timeout: defaults::body_idle(),
            h2_ping_interval: defaults::h2_ping_interval(),
            h2_ping_timeout: defaults::h2_ping_timeout(),
            max_per_address: 0,
        }
    }
}

mod defaults {
    use std::time::Duration;

    pub(super) fn first_byte() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn idle() -> Duration {
        Duration::from_secs(75)
    }
    pub(super) fn body_idle() -> Duration {
        Duration::from_secs(60)
    }
    pub(super) fn h2_ping_interval() -> Duration {
        Duration::from_secs(20)
    }
    pub(super) fn h2_ping_timeout() -> Duration {
        Duration::from_secs(10)
    }
}

/// Per-state connection timeouts (the header read and TLS handshake timeout is
/// `header_read_timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connections {
    /// From accept to the connection's first byte (its protocol preface or TLS hello).
    pub first_byte_timeout: Duration,
    /// With no request in flight (an idle keep-alive or HTTP/2 connection), nothing read for this
    /// long closes the connection.
    pub idle_timeout: Duration,
    /// With a request in flight whose response has begun, no byte moved either way (the client
    /// not sending its body, not reading the response, or the upstream stalling its body) for
    /// this long closes the connection. Waiting for the response head is bounded by
    /// `upstream_timeout` instead.
    pub body_idle_timeout: Duration,
    /// HTTP/2: a PING this often on a quiet connection…
    pub h2_ping_interval: Duration,
    /// …that must be answered within this.
    pub h2_ping_timeout: Duration,
    /// Open connections per client address at most; 0: no limit (clients behind one NAT or load
    /// balancer share an address).
    pub max_per_address: usize,
}

impl Default for Connections {
    fn default() -> Self {
        let r = RawConnections::default();
        Connections {
            first_byte_timeout: r.first_byte_timeout,
            idle_timeout: r.idle_timeout,
            body_idle_timeout: r.body_idle_timeout,
            h2_ping_interval: r.h2_ping_interval,
            h2_ping_timeout: r.h2_ping_timeout,
            max_per_address: r.max_per_address,
        }
    }
}

impl RawConnections {
    pub(super) fn validate(self, invalid: &dyn Fn(&str, String) -> ConfigError) -> Result<Connections, ConfigError> {
        for (key, value) in [
            ("connections.first_byte_timeout", self.first_byte_timeout),
            ("connections.idle_timeout", self.idle_timeout),
            ("connections.body_idle_timeout", self.body_idle_timeout),
            ("connections.h2_ping_interval", self.h2_ping_interval),
            ("connections.h2_ping_timeout", self.h2_ping_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be more than 0".to_owned()));
            }
        }
        Ok(Connections {
            first_byte_timeout: self.first_byte_timeout,
            idle_timeout: self.idle_timeout,
            body_idle_timeout: self.body_idle_timeout,
            h2_ping_interval: self.h2_ping_interval,
            h2_ping_timeout: self.h2_ping_timeout,
            max_per_address: self.max_per_address,
        })
    }
}

/// `[headers]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaders {
    #[serde(default)]
    allow_underscores: bool,
    #[serde(default = "yes")]
    preserve_host: bool,
}

fn yes() -> bool {
    true
}

impl Default for RawHeaders {
    fn default() -> Self {
        RawHeaders { allow_underscores: false, preserve_host: true }
    }
}

/// How the request head is cleaned before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    /// Forward headers whose names contain `_` (CGI/WSGI upstreams read `x_flag_a` as `x-flag-a`,
    /// so a client could set a flag header); dropped and counted by default.
    pub allow_underscores: bool,
    /// The client's Host (or HTTP/2 `:authority`) goes upstream; else the endpoint's authority.
    pub preserve_host: bool,
}

impl RawHeaders {
    pub(super) fn validate(self) -> Headers {
        Headers { allow_underscores: self.allow_underscores, preserve_host: self.preserve_host }
    }
}
