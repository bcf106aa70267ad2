//! Rampart's protobuf definitions and their generated Rust (prost messages, tonic services).

/// `rampart.v1`: the control stream between sidecars and the control plane.
pub mod rampart {
    pub mod v1 {
        #![allow(clippy::all, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("rampart.v1");
    }
}

/// flagd's APIs, served by the sidecar to OpenFeature SDKs: `flagd.evaluation.v1` and `v2` (RPC
/// mode) and `flagd.sync.v1` (in-process mode).
pub mod flagd {
    pub mod evaluation {
        pub mod v1 {
            #![allow(clippy::all, unreachable_pub, missing_debug_implementations)]
            tonic::include_proto!("flagd.evaluation.v1");
        }
        pub mod v2 {
            #![allow(clippy::all, unreachable_pub, missing_debug_implementations)]
            tonic::include_proto!("flagd.evaluation.v2");
        }
    }
    pub mod sync {
        pub mod v1 {
            #![allow(clippy::all, unreachable_pub, missing_debug_implementations, deprecated)]
            tonic::include_proto!("flagd.sync.v1");
        }
    }
}

pub mod convert;
