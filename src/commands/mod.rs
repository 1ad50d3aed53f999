//! The commands other than `run` (which is [`crate::daemon`]): one file
//! each. They use the runtime modules; nothing uses them but `main`.

pub mod check_config;
pub mod drain;
pub mod import;
pub mod spool;
pub mod status;
