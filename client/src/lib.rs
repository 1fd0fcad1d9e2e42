//! keyreg's device and auditor SDK.
//!
//! * [`session`]: mutually authenticated Noise sessions between registered
//!   devices, over [`framing`]'s length-prefixed frames.

pub mod framing;
pub mod session;
