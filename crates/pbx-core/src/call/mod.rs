//! The call engine: SIP dialogs, RTP legs and the two-channel timeline.
mod decode;
mod demux;
mod dialog;
pub mod engine;
pub mod ids;
mod leg;
pub mod meta;
pub mod pause;
mod seq;
mod side;
mod tail;
pub mod timeline;
mod tsclock;

pub use dialog::HOLD_TIMEOUT_US;
pub use engine::{
    CallEngine, EngineConfig, EngineStats, Narrowed, SampleRatePolicy, CLOCK_STEP_BACK_US,
};
pub use meta::{
    CallKey, CallMeta, EndReason, Party, PartyInfo, Pause, PauseBy, RecordingSink, RecordingStart,
};
