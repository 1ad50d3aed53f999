//! Who is who: the role of each channel (`channels[i].role` = agent,
//! customer or unknown; `channels[i].extension`) and the call's direction
//! when the source did not know it (CONTRACT §3).
//!
//! In: the call's parties (`from` = channel 0, `to` = channel 1: for SIPREC
//! these are the metadata's participants, their AoR in `uri`), the direction
//! a source already knows (a CDR's), and [`RoleRules`] (`[roles]`).
//! Out: a direction and a [`ChannelRole`] per channel. Pure functions.
//!
//! Rules: when the INVITE that opened the call came from one of `trunks`
//! (and went to an address that is not one) the call is inbound; sent to a
//! trunk from elsewhere, outbound. Otherwise a party is internal when its number matches `internal_numbers`
//! (`*` any run, `?` one character), or is all digits with a length in
//! `extension_length`, or its URI matches `agent_uris`. Caller internal and
//! callee not: outbound; the reverse: inbound; both: internal. Inbound: the
//! callee is the agent; outbound: the caller; internal: both. The extension
//! is the agent's number when it is internal. Nothing is guessed beyond
//! that: an unclassified call has both channels `unknown`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::doc::DocParty;

/// `[roles]`: what makes a party internal (an agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRules {
    /// Number patterns of internal parties (`*`, `?`).
    pub internal_numbers: Vec<String>,
    /// All-digit numbers this long (inclusive range) are extensions.
    pub extension_length: Option<(usize, usize)>,
    /// URI / AoR patterns of agents (`sip:*@agents.example.com`), case-insensitive.
    pub agent_uris: Vec<String>,
    /// Addresses of the carrier side (trunks, SBCs): signalling from one of
    /// them is the outside world.
    pub trunks: Vec<IpNet>,
}

impl Default for RoleRules {
    /// As `[roles]` defaults: extensions are 2 to 5 digits.
    fn default() -> Self {
        RoleRules {
            internal_numbers: Vec::new(),
            extension_length: Some((2, 5)),
            agent_uris: Vec::new(),
            trunks: Vec::new(),
        }
    }
}

/// `channels[i].role` and `.extension`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelRole {
    /// "agent" | "customer" | "unknown"
    pub role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
}

/// `*` matches any run of characters, `?` one; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl RoleRules {
    /// Whether this party is internal (an agent's phone).
    pub fn is_internal(&self, p: &DocParty) -> bool {
        let n = p.number.trim();
        if !n.is_empty() {
            if self.internal_numbers.iter().any(|pat| glob(pat, n)) {
                return true;
            }
            if let Some((lo, hi)) = self.extension_length {
                if n.bytes().all(|b| b.is_ascii_digit()) && (lo..=hi).contains(&n.len()) {
                    return true;
                }
            }
        }
        if let Some(uri) = p.uri.as_deref().filter(|u| !u.is_empty()) {
            let uri = uri
                .trim_matches(|c| c == '<' || c == '>')
                .to_ascii_lowercase();
            if self
                .agent_uris
                .iter()
                .any(|pat| glob(&pat.to_ascii_lowercase(), &uri))
            {
                return true;
            }
        }
        false
    }

    /// The direction (the one given when it is not "unknown") and each
    /// channel's role.
    pub fn classify(
        &self,
        from: Option<&DocParty>,
        to: Option<&DocParty>,
        direction: &str,
    ) -> (String, [ChannelRole; 2]) {
        self.classify_with(from, to, direction, None)
    }

    /// [`RoleRules::classify`], knowing the addresses the opening INVITE
    /// came from and went to (`signalling`: caller side, callee side).
    pub fn classify_with(
        &self,
        from: Option<&DocParty>,
        to: Option<&DocParty>,
        direction: &str,
        signalling: Option<[IpAddr; 2]>,
    ) -> (String, [ChannelRole; 2]) {
        let internal = [from, to].map(|p| p.is_some_and(|p| self.is_internal(p)));
        let trunk = signalling.map(|s| s.map(|a| self.trunks.iter().any(|n| n.contains(&a))));
        let direction = match (direction, trunk) {
            ("inbound" | "outbound" | "internal", _) => direction,
            (_, Some([true, false])) => "inbound",
            (_, Some([false, true])) => "outbound",
            _ => match internal {
                [true, true] => "internal",
                [true, false] => "outbound",
                [false, true] => "inbound",
                [false, false] => "unknown",
            },
        };
        let roles = match direction {
            "inbound" => ["customer", "agent"],
            "outbound" => ["agent", "customer"],
            "internal" => ["agent", "agent"],
            _ => ["unknown", "unknown"],
        };
        let parties = [from, to];
        let ch = |i: usize| ChannelRole {
            role: roles[i],
            extension: (roles[i] == "agent" && internal[i])
                .then(|| parties[i].map(|p| p.number.trim().to_string()))
                .flatten()
                .filter(|n| !n.is_empty()),
        };
        (direction.to_string(), [ch(0), ch(1)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(number: &str, uri: &str) -> DocParty {
        DocParty {
            number: number.into(),
            name: None,
            uri: Some(uri.into()),
        }
    }

    #[test]
    fn globs() {
        assert!(glob("1*", "1001"));
        assert!(glob("+7495123????", "+74951234567"));
        assert!(!glob("+7495123????", "+749512345678"));
        assert!(glob("*", ""));
        assert!(glob(
            "sip:*@agents.example.com",
            "sip:2002@agents.example.com"
        ));
        assert!(!glob(
            "sip:*@agents.example.com",
            "sip:2002@agents.example.org"
        ));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
    }

    #[test]
    fn direction_and_roles_from_the_parties() {
        let r = RoleRules::default();
        let ext = party("2002", "sip:2002@pbx");
        let ext2 = party("2003", "sip:2003@pbx");
        let outside = party("+15551001", "sip:+15551001@carrier");
        // Inbound: the callee is the agent.
        let (d, roles) = r.classify(Some(&outside), Some(&ext), "unknown");
        assert_eq!(d, "inbound");
        assert_eq!(roles[0].role, "customer");
        assert_eq!(roles[0].extension, None);
        assert_eq!(roles[1].role, "agent");
        assert_eq!(roles[1].extension.as_deref(), Some("2002"));
        // Outbound: the caller.
        let (d, roles) = r.classify(Some(&ext), Some(&outside), "unknown");
        assert_eq!(d, "outbound");
        assert_eq!((roles[0].role, roles[1].role), ("agent", "customer"));
        assert_eq!(roles[0].extension.as_deref(), Some("2002"));
        // Internal: both.
        let (d, roles) = r.classify(Some(&ext), Some(&ext2), "unknown");
        assert_eq!(d, "internal");
        assert_eq!(roles[1].extension.as_deref(), Some("2003"));
        // Neither: unknown, nothing guessed.
        let (d, roles) = r.classify(Some(&outside), Some(&outside), "unknown");
        assert_eq!(d, "unknown");
        assert_eq!((roles[0].role, roles[1].role), ("unknown", "unknown"));
        // A direction the source knew wins (a CDR's): the DID dialled is no
        // extension, so the agent channel has none.
        let did = party("+15550000", "");
        let (d, roles) = r.classify(Some(&outside), Some(&did), "inbound");
        assert_eq!(d, "inbound");
        assert_eq!(roles[1].role, "agent");
        assert_eq!(roles[1].extension, None);
    }

    #[test]
    fn configured_patterns_and_uris() {
        let r = RoleRules {
            internal_numbers: vec!["+7495123????".into()],
            extension_length: None,
            agent_uris: vec!["sip:*@agents.example.com".into()],
            trunks: Vec::new(),
        };
        let a = party("+74951234567", "");
        let b = party("alice", "<SIP:alice@Agents.Example.com>");
        let c = party("2002", "sip:2002@pbx");
        assert!(r.is_internal(&a));
        assert!(r.is_internal(&b));
        assert!(!r.is_internal(&c), "extension_length off");
        let (d, roles) = r.classify(Some(&c), Some(&b), "unknown");
        assert_eq!(d, "inbound");
        assert_eq!(roles[1].extension.as_deref(), Some("alice"));
    }

    #[test]
    fn an_invite_from_or_to_a_trunk_tells_the_direction() {
        let r = RoleRules {
            trunks: vec!["192.0.2.0/24".parse().unwrap()],
            ..RoleRules::default()
        };
        let trunk: IpAddr = "192.0.2.10".parse().unwrap();
        let pbx: IpAddr = "10.0.0.5".parse().unwrap();
        // Long numbers on both sides: only the trunk tells.
        let a = party("+15551001", "");
        let b = party("+15552002", "");
        let (d, roles) = r.classify_with(Some(&a), Some(&b), "unknown", Some([trunk, pbx]));
        assert_eq!(d, "inbound");
        assert_eq!((roles[0].role, roles[1].role), ("customer", "agent"));
        let (d, roles) = r.classify_with(Some(&a), Some(&b), "unknown", Some([pbx, trunk]));
        assert_eq!(d, "outbound");
        assert_eq!((roles[0].role, roles[1].role), ("agent", "customer"));
        // Trunk to trunk or no trunk: the numbers decide.
        let ext = party("2002", "");
        let (d, _) = r.classify_with(Some(&a), Some(&ext), "unknown", Some([pbx, pbx]));
        assert_eq!(d, "inbound");
        let (d, _) = r.classify_with(Some(&a), Some(&b), "unknown", Some([trunk, trunk]));
        assert_eq!(d, "unknown");
        // Without the addresses (SIPREC): the numbers.
        let (d, roles) = r.classify_with(Some(&ext), Some(&b), "unknown", None);
        assert_eq!(d, "outbound");
        assert_eq!(roles[0].extension.as_deref(), Some("2002"));
    }
}
