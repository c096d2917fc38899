//! Automatic remediation (issue 14): what the scanner does, on its own, to
//! a file it denied. The `[remediation]` rules map threat names to an
//! action, the first match winning:
//!
//! * `deny` (also what a threat matching no rule gets): the open is denied,
//!   nothing else;
//! * `delete`: the guest deletes the file (`Remediate(Delete)`, protocol
//!   §14.2, with the identity judged: a replaced file is left alone);
//! * `quarantine`: the scanner first stores every byte of the file in its
//!   quarantine store, and only when that succeeded asks the guest to delete
//!   it. A file whose bytes the scanner does not hold whole (streamed
//!   because large, or denied from the identity cache without a read) or
//!   that the store refuses (full) is **kept**: a quarantine never loses
//!   evidence.
//!
//! Never more than `max_per_guest_per_minute` remediations per guest
//! identity; more are not sent (counted, and reported as events). Each
//! attempt's outcome goes to the log and the event sink (`remediation`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// What to do about a threat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemediationAction {
    /// Deny the open only.
    Deny,
    /// Have the guest delete the file.
    Delete,
    /// Store the file's bytes, then have the guest delete it.
    Quarantine,
}

impl RemediationAction {
    /// The name in config, logs and events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Delete => "delete",
            Self::Quarantine => "quarantine",
        }
    }
}

/// One rule: a threat-name pattern (`*` any run, `?` one character, case
/// sensitive) and its action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemediationRule {
    /// The pattern, e.g. `Eicar-*` or `*`.
    pub threat: String,
    /// The action.
    pub action: RemediationAction,
}

/// The `[remediation]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemediationConfig {
    /// Rules, first match wins; none (the default): deny only.
    pub rules: Vec<RemediationRule>,
    /// Most remediations sent to one guest per minute.
    pub max_per_guest_per_minute: u32,
    /// How long to wait for the guest's answer, ms.
    pub deadline_ms: u64,
}

impl Default for RemediationConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            max_per_guest_per_minute: 10,
            deadline_ms: 10_000,
        }
    }
}

impl RemediationConfig {
    /// Checks values.
    pub fn validate(&self, quarantine_configured: bool) -> Result<(), ConfigError> {
        if self.deadline_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "remediation.deadline_ms",
                value: "0".into(),
                why: "must be at least 1".into(),
            });
        }
        for r in &self.rules {
            if r.threat.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "remediation.rules",
                    value: "\"\"".into(),
                    why: "a rule's threat pattern must not be empty (use \"*\" for every threat)"
                        .into(),
                });
            }
            if r.action == RemediationAction::Quarantine && !quarantine_configured {
                return Err(ConfigError::Invalid {
                    key: "remediation.rules",
                    value: format!("{{ threat = {:?}, action = \"quarantine\" }}", r.threat),
                    why: "quarantine needs a quarantine store: set quarantine.dir".into(),
                });
            }
        }
        Ok(())
    }

    /// The action for `threat`: the first matching rule's, else `Deny`.
    pub fn action_for(&self, threat: &str) -> RemediationAction {
        self.rules
            .iter()
            .find(|r| glob(r.threat.as_bytes(), threat.as_bytes()))
            .map_or(RemediationAction::Deny, |r| r.action)
    }
}

/// `*` / `?` matching (iterative with one backtrack point: linear enough
/// for threat names of at most 255 bytes). Written here because the rule
/// language is this small; a glob crate would bring path semantics (`/`)
/// that threat names do not have.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// Per-guest rate limit: at most `per_minute` in any sliding minute.
#[derive(Debug, Default)]
pub struct RateLimit {
    sent: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimit {
    /// Takes one slot for `guest` at `now`; `false` when the minute is full.
    pub fn take(&self, guest: &str, per_minute: u32, now: Instant) -> bool {
        let mut sent = self
            .sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let q = sent.entry(guest.to_owned()).or_default();
        while q
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(60))
        {
            q.pop_front();
        }
        if q.len() >= per_minute as usize {
            return false;
        }
        q.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_and_question_marks() {
        for (p, t, m) in [
            ("*", "anything", true),
            ("*", "", true),
            ("Eicar-*", "Eicar-Test-Signature", true),
            ("Eicar-*", "eicar-test", false),
            ("*Test*", "Eicar-Test-Signature", true),
            ("Win.Trojan.?", "Win.Trojan.A", true),
            ("Win.Trojan.?", "Win.Trojan.AB", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), m, "{p} ~ {t}");
        }
    }

    #[test]
    fn the_first_matching_rule_wins_and_no_match_is_deny() {
        let c = RemediationConfig {
            rules: vec![
                RemediationRule {
                    threat: "Eicar-*".into(),
                    action: RemediationAction::Delete,
                },
                RemediationRule {
                    threat: "*".into(),
                    action: RemediationAction::Deny,
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            c.action_for("Eicar-Test-Signature"),
            RemediationAction::Delete
        );
        assert_eq!(c.action_for("Win.Trojan.X"), RemediationAction::Deny);
        assert_eq!(
            RemediationConfig::default().action_for("x"),
            RemediationAction::Deny
        );
    }

    #[test]
    fn quarantine_rules_need_a_store() {
        let c = RemediationConfig {
            rules: vec![RemediationRule {
                threat: "*".into(),
                action: RemediationAction::Quarantine,
            }],
            ..Default::default()
        };
        assert!(
            c.validate(false)
                .unwrap_err()
                .to_string()
                .contains("quarantine.dir")
        );
        c.validate(true).unwrap();
    }

    #[test]
    fn the_rate_limit_is_per_guest_and_slides() {
        let r = RateLimit::default();
        let t0 = Instant::now();
        assert!(r.take("a", 2, t0));
        assert!(r.take("a", 2, t0));
        assert!(!r.take("a", 2, t0 + Duration::from_secs(59)));
        assert!(r.take("b", 2, t0));
        assert!(r.take("a", 2, t0 + Duration::from_secs(60)));
    }
}
