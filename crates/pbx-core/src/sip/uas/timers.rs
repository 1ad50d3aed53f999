//! Timers (RFC 3261 §17.2.1 Timer G/H, RFC 6026): retransmission of
//! finals over UDP, ACK waits, decision deadlines and transaction expiry.
//!
//! In: the time of a [`super::UasInput::Timeout`]. Out: retransmitted
//! responses and BYEs, `503`/`500` for undecided offers, BYE and
//! [`super::EndCause::AckTimeout`] when a `2xx` is never ACKed, and
//! dropped state. Promises: intervals double from T1 up to T2 and never
//! burst when the caller is late; every deadline is reported by
//! [`super::Uas::poll_timeout`].

use super::*;

impl Uas {
    pub(super) fn run_timers(&mut self, at: Timestamp) {
        let due: Vec<TxKey> = self
            .txs
            .iter()
            .filter(|(_, t)| {
                [
                    t.retransmit.map(|r| r.0),
                    t.give_up_at,
                    t.decide_by,
                    t.expires_at,
                ]
                .into_iter()
                .flatten()
                .any(|d| d <= at)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.tx_timers(&key, at);
        }
        let due: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, c)| c.expires_at <= at || c.retransmit.is_some_and(|r| r.0 <= at))
            .map(|(k, _)| k.clone())
            .collect();
        for b in due {
            let Some(c) = self.clients.get_mut(&b) else {
                continue;
            };
            if c.expires_at <= at {
                self.remove_client(&b);
                continue;
            }
            if let Some((next, interval)) = c.retransmit {
                if next <= at {
                    c.retransmit = Some(next_retransmit(next, interval, at));
                    self.events.push_back(UasEvent::Send {
                        to: c.peer,
                        transport: c.transport,
                        bytes: c.bytes.clone(),
                    });
                }
            }
        }
    }

    pub(super) fn tx_timers(&mut self, key: &TxKey, at: Timestamp) {
        let Some(tx) = self.txs.get_mut(key) else {
            return;
        };
        // The shell never decided.
        if tx.decide_by.is_some_and(|d| d <= at) && tx.state == TxState::Proceeding {
            tx.decide_by = None;
            let kind = tx.kind;
            let dialog = tx.dialog.clone();
            if let Some(d) = &dialog {
                if let Some(dl) = self.dialogs.get_mut(d) {
                    if dl.pending.as_ref() == Some(key) {
                        dl.pending = None;
                    }
                }
            }
            if kind == TxKind::InitialInvite {
                self.final_failure(key, 503, "Service Unavailable", &[], at);
                if let Some(d) = dialog {
                    self.end_dialog(&d, EndCause::DecisionTimeout);
                }
            } else if kind == TxKind::HeldBye {
                // The shell never said: the BYE is answered anyway (a BYE is
                // never refused).
                self.held_byes.retain(|_, k| k != key);
                self.final_response(key, 200, "OK", &[], at);
            } else {
                let extra = [("Retry-After", "1".to_string())];
                self.final_failure(key, 500, "Server Internal Error", &extra, at);
            }
            return;
        }
        if tx.expires_at.is_some_and(|e| e <= at) {
            // Timer H / L expiry coincides with removal: an unacknowledged
            // 2xx ends the call first.
            if tx.state == TxState::Accepted {
                self.ack_timeout(key, at);
            }
            self.remove_tx(key);
            return;
        }
        if tx.give_up_at.is_some_and(|g| g <= at) {
            tx.give_up_at = None;
            tx.retransmit = None;
            if tx.state == TxState::Accepted {
                self.ack_timeout(key, at);
            }
            return;
        }
        if let Some((next, interval)) = tx.retransmit {
            if next <= at {
                tx.retransmit = Some(next_retransmit(next, interval, at));
                if let Some(bytes) = tx.last_response.clone() {
                    self.events.push_back(UasEvent::Send {
                        to: tx.peer,
                        transport: tx.transport,
                        bytes,
                    });
                }
            }
        }
    }

    /// The 2xx of `key` was never acknowledged: BYE and end (RFC 3261
    /// §13.3.1.4).
    pub(super) fn ack_timeout(&mut self, key: &TxKey, at: Timestamp) {
        let Some(tx) = self.txs.get_mut(key) else {
            return;
        };
        tx.state = TxState::Confirmed;
        tx.retransmit = None;
        tx.give_up_at = None;
        let Some(d) = tx.dialog.clone() else {
            return;
        };
        let waiting = self
            .dialogs
            .get(&d)
            .and_then(|dl| dl.ack_wait.as_ref())
            .is_some_and(|(_, k)| k == key);
        if !waiting {
            return;
        }
        if let Some(dl) = self.dialogs.get_mut(&d) {
            dl.ack_wait = None;
            if let Some(p) = dl.pending.take() {
                self.final_failure(&p, 487, "Request Terminated", &[], at);
            }
        }
        self.send_bye(&d, at);
        self.end_dialog(&d, EndCause::AckTimeout);
    }
}

/// Interval doubles up to T2; the next time follows the schedule unless the
/// caller is late, then counts from now (no bursts).
pub(super) fn next_retransmit(prev: Timestamp, interval: i64, at: Timestamp) -> (Timestamp, i64) {
    let interval = (interval.saturating_mul(2)).min(T2_US);
    let mut next = prev.add_micros(interval);
    if next <= at {
        next = at.add_micros(interval);
    }
    (next, interval)
}
