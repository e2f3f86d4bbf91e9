//! The picket.v1 protocol. Versioned by package: an incompatible change is picket.v2, served
//! next to v1 until sensors have moved.

pub mod v1 {
    tonic::include_proto!("picket.v1");
}
