//! Two-channel timeline (written by the engine author).
