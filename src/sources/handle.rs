//! What every source shares: the [`SourceHandle`] the daemon holds of a
//! running source, and the recording context and settings a source takes
//! from the config.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use crate::config::Config;
use crate::control::SendRequest;
use crate::recording::{AudioTap, RecordingContext, RecordingSettings, RoleRules};

/// What a reload did to a running source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reload {
    /// The new settings are in use; calls in progress went on.
    Applied,
    /// The source cannot take them in place (disabled, a new address, a
    /// new spool, its thread ended): stop it and start it again from the
    /// new config.
    Restart,
}

/// A stop in progress: resolves when the source's recordings are closed.
pub(crate) type Stopping = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the daemon holds of a running source (see the module docs).
pub(crate) trait SourceHandle: Send {
    /// Its name in the status and the logs.
    fn name(&self) -> &'static str;
    /// A new configuration (`changed`: the sections that differ from the
    /// running one, as `Config::diff_restart_needed` names them).
    fn reload(&mut self, cfg: &Config, changed: &[&'static str]) -> Reload;
    /// Stop taking input, close every open recording (cut by shutdown),
    /// resolve when done.
    fn stop(self: Box<Self>) -> Stopping;
    /// How the control API (`/v1/calls`) reaches its engine, if it has
    /// calls in progress to list, pause and resume.
    fn api(&self) -> Option<SendRequest> {
        None
    }
}

/// The live stream's tap, set once by the daemon at start: every live
/// source's recordings hand their audio to it (it starts a stream only while
/// `[stream]` is enabled).
static STREAM_TAP: OnceLock<Arc<dyn AudioTap>> = OnceLock::new();

/// Give the recordings of every source started from now on to `tap`.
pub(crate) fn set_stream_tap(tap: Arc<dyn AudioTap>) {
    let _ = STREAM_TAP.set(tap);
}

/// The recording context of `source` under `cfg`.
pub(crate) fn context(cfg: &Config, source: &'static str) -> RecordingContext {
    RecordingContext {
        agent_id: cfg.agent.id.clone(),
        source,
        min_duration: cfg.recording.min_duration,
        seal: cfg.spool.keys.clone(),
        tap: STREAM_TAP.get().cloned(),
        roles: role_rules(cfg),
    }
}

/// Who is who (`[roles]`).
pub(crate) fn role_rules(cfg: &Config) -> RoleRules {
    RoleRules {
        internal_numbers: cfg.roles.internal_numbers.clone(),
        extension_length: cfg.roles.extension_length,
        agent_uris: cfg.roles.agent_uris.clone(),
        trunks: cfg.roles.trunks.clone(),
    }
}

/// The settings a reload applies to a running source in place.
pub(crate) fn recording_settings(cfg: &Config, source: &'static str) -> RecordingSettings {
    RecordingSettings {
        engine: cfg.recording.engine_config(),
        ctx: context(cfg, source),
        dir: cfg.spool.dir.clone(),
    }
}

/// A blocking stop run off the async runtime.
pub(crate) fn stop_blocking(f: impl FnOnce() + Send + 'static) -> Stopping {
    Box::pin(async move {
        let _ = tokio::task::spawn_blocking(f).await;
    })
}
