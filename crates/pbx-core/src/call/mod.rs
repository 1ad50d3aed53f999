//! The call engine: SIP dialogs, RTP legs and the two-channel timeline.
pub mod engine;
pub mod meta;
pub mod timeline;

pub use engine::{CallEngine, EngineConfig, EngineStats, SampleRatePolicy};
pub use meta::{CallKey, CallMeta, EndReason, Party, PartyInfo, RecordingSink, RecordingStart};
