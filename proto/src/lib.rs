//! Rampart's protobuf definitions and their generated Rust (prost messages, tonic services).

/// `rampart.v1`: the control stream between sidecars and the control plane.
pub mod rampart {
    pub mod v1 {
        #![allow(clippy::all, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("rampart.v1");
    }
}

pub mod convert;
