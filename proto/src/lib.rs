//! Rampart's protobuf definitions and their generated Rust (prost messages, tonic services).

/// `rampart.v1`: the control stream between sidecars and the control plane.
pub mod rampart {
    pub mod v1 {
        #![allow(clippy::all, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("rampart.v1");
    }
}

/// `flagd.evaluation.v1`: flagd's flag-evaluation API, served by the sidecar to OpenFeature SDKs.
pub mod flagd {
    pub mod evaluation {
        pub mod v1 {
            #![allow(clippy::all, unreachable_pub, missing_debug_implementations)]
            tonic::include_proto!("flagd.evaluation.v1");
        }
    }
}

pub mod convert;
