//! What one side of a call announced in its SDP: its receive addresses
//! (each with when it was announced), its payload types, its preferred
//! codec and its SRTP keys, and the decryption of what it sends.

use std::net::SocketAddr;

use super::meta::Party;
use crate::audio::codec::Codec;
use crate::rtp::srtp::SrtpStream;
use crate::sip::sdp::Crypto;
use crate::sip::{Method, SipMessage};

/// Receive addresses and payload-type map announced by one side.
#[derive(Debug, Default, Clone)]
pub(super) struct SideMedia {
    /// Its receive addresses, oldest first, each with when it was first
    /// announced (the tracker's count of new announcements then).
    pub(super) endpoints: Vec<(SocketAddr, u32)>,
    pub(super) pt_map: PtMap,
    /// First audio codec of the latest SDP of this side.
    pub(super) preferred: Option<Codec>,
    /// SDES keys (`a=crypto`) of this side's SRTP: what it encrypts the
    /// audio it sends with (sniffed and imported calls).
    pub(super) crypto: Vec<Crypto>,
    /// Decrypting what this side sends, made at its first packet.
    pub(super) srtp_rx: SrtpRx,
}

impl SideMedia {
    pub(super) fn announced(&self, ep: &SocketAddr) -> Option<u32> {
        self.endpoints.iter().find(|e| e.0 == *ep).map(|e| e.1)
    }

    pub(super) fn knows(&self, ep: &SocketAddr) -> bool {
        self.announced(ep).is_some()
    }

    /// `ep`, announced before, announced again after another of this
    /// side's: the latest again (`announcements`: the tracker's count).
    pub(super) fn announce_again(&mut self, ep: SocketAddr, announcements: &mut u32) {
        let latest = self.endpoints.iter().map(|e| e.1).max();
        if let Some(e) = self.endpoints.iter_mut().find(|e| e.0 == ep) {
            if latest.is_some_and(|l| e.1 < l) {
                *announcements = announcements.saturating_add(1);
                e.1 = *announcements;
            }
        }
    }
}

/// A SIPREC m-line's payload number `pt` is `codec` in the stream of
/// `party` (None: nobody is known to send it yet, both sides get it). Each
/// m-line's numbers are its sender's stream's: put on the other side (a
/// packet's codec is looked up on its receiver's side first), so two lines
/// giving one number to two codecs (96 Opus on one, 96 PCMA on the other,
/// or telephone-event at 48000 and at 8000) each keep theirs; the sender's
/// side gets it too where it has none (a fallback). Before, the last line
/// gave its codec to both streams: the other decoded as noise.
pub(super) fn add_line_codec(
    sides: &mut [SideMedia; 2],
    party: Option<Party>,
    pt: u8,
    codec: Codec,
) {
    match party {
        Some(p) => {
            sides[p.other().channel()].pt_map.insert(pt, codec.clone());
            let own = &mut sides[p.channel()].pt_map;
            if own.get(&pt).is_none() {
                own.insert(pt, codec);
            }
        }
        None => {
            sides[0].pt_map.insert(pt, codec.clone());
            sides[1].pt_map.insert(pt, codec);
        }
    }
}

/// A side's payload type numbers and their codecs: a few entries, sorted,
/// searched by halves (a hash table for four payload types took twice the
/// room, for every side of every call).
#[derive(Debug, Clone, Default)]
pub(super) struct PtMap(Vec<(u8, Codec)>);

impl PtMap {
    pub(super) fn get(&self, pt: &u8) -> Option<&Codec> {
        self.0
            .binary_search_by_key(pt, |e| e.0)
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub(super) fn insert(&mut self, pt: u8, codec: Codec) {
        match self.0.binary_search_by_key(&pt, |e| e.0) {
            Ok(i) => self.0[i].1 = codec,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (pt, codec));
            }
        }
    }
}

/// A side's SRTP decryption state: made from the keys when the first
/// packet comes (a copy starts afresh).
#[derive(Default)]
pub(super) struct SrtpRx(pub(super) Option<Box<SrtpStream>>);

impl Clone for SrtpRx {
    fn clone(&self) -> Self {
        SrtpRx(None)
    }
}

impl std::fmt::Debug for SrtpRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "SrtpRx(keyed)"
        } else {
            "SrtpRx"
        })
    }
}

/// See [`Call::offers`].
const OFFERS_KEPT: usize = 4;

/// A request that may carry an offer ([`Call::offers`]): its CSeq number
/// and method, its top Via branch and the addresses it went between (what
/// its responses carry, and the way they come back: the CSeq numbers of
/// the two sides' requests are counted apart, and one side's request the
/// capture missed may carry the number, and with a careless sender the
/// branch, of the other's seen before), and its sender.
#[derive(Debug)]
pub(super) struct Offered {
    pub(super) cseq: u32,
    pub(super) method: Method,
    pub(super) branch: Option<String>,
    pub(super) path: (SocketAddr, SocketAddr),
    pub(super) by: Party,
}

/// Who sent a SIP message of the call, and whether a request is of its
/// dialog.
impl super::dialog::Call {
    /// `msg`, a request that may carry an offer (INVITE, UPDATE, PRACK),
    /// sent by `by` over `path`, is kept for its answers
    /// ([`Self::side_of_sender`]): the latest [`OFFERS_KEPT`].
    pub(super) fn note_offer(
        &mut self,
        msg: &SipMessage,
        path: (SocketAddr, SocketAddr),
        by: Party,
    ) {
        let Some(m @ (Method::Invite | Method::Update | Method::Prack)) = msg.method() else {
            return;
        };
        if self.offers.len() >= OFFERS_KEPT {
            self.offers.remove(0);
        }
        self.offers.push(Offered {
            cseq: msg.cseq,
            method: m.clone(),
            branch: msg.via_branch.clone(),
            path,
            by,
        });
    }

    /// Whether an in-dialog request belongs to the call's dialog: its tags
    /// name the callee's (once an answer gave it) and the caller's (RFC
    /// 3261 12: a dialog is its Call-ID and both tags). A forked INVITE's
    /// other dialogs share the Call-ID and the caller's tag only; a BYE
    /// naming the callee's tag beside another From tag is no request of
    /// this dialog (its UAS answers 481) and ended the recording.
    pub(super) fn in_dialog(&self, msg: &SipMessage) -> bool {
        let Some(t) = &self.callee.tag else {
            return true;
        };
        let other = if msg.to.tag.as_ref() == Some(t) {
            &msg.from.tag
        } else if msg.from.tag.as_ref() == Some(t) {
            &msg.to.tag
        } else {
            return false;
        };
        match &self.caller_tag {
            Some(c) => other.as_ref() == Some(c),
            None => true,
        }
    }

    /// `path`: the message's source and destination.
    pub(super) fn side_of_sender(&self, msg: &SipMessage, path: (SocketAddr, SocketAddr)) -> Party {
        if !msg.is_request() && msg.via_branch.is_some() {
            // The request it answers: its CSeq and Via branch, sent the
            // other way.
            let request = self.offers.iter().rev().find(|o| {
                o.cseq == msg.cseq
                    && o.method == msg.cseq_method
                    && o.branch == msg.via_branch
                    && o.path == (path.1, path.0)
            });
            if let Some(o) = request {
                return o.by.other();
            }
        }
        // In requests From is the sender; in responses From is still the
        // request's sender, so the responder is the other party.
        let from_is_caller = match (&self.caller_tag, &msg.from.tag) {
            (Some(c), Some(t)) => c == t,
            _ => msg.from.uri == self.caller.uri,
        };
        let requester = if from_is_caller {
            Party::Caller
        } else {
            Party::Callee
        };
        if msg.is_request() {
            requester
        } else {
            requester.other()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_type_map_finds_what_was_put_in_any_order_and_replaces() {
        let mut m = PtMap::default();
        let mut want = std::collections::HashMap::new();
        // Payload types in an SDP's order, repeated, and replaced.
        for pt in [101u8, 0, 8, 13, 9, 0, 127, 96, 101] {
            let c = Codec::from_static_pt(pt % 19).unwrap_or(Codec::Pcmu);
            m.insert(pt, c.clone());
            want.insert(pt, c);
        }
        assert_eq!(m.0.len(), want.len());
        assert!(m.0.windows(2).all(|w| w[0].0 < w[1].0));
        for pt in 0..=255u8 {
            assert_eq!(m.get(&pt), want.get(&pt), "pt {pt}");
        }
        m.insert(0, Codec::Pcma);
        assert_eq!(m.get(&0), Some(&Codec::Pcma));
        assert_eq!(m.0.len(), want.len());
    }
}
