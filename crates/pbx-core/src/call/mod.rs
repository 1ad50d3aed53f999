//! The call engine: SIP dialogs, RTP legs and the two-channel timeline.
pub mod clock;
pub mod mixer;
