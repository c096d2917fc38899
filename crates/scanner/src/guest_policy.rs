//! The policy the host gives its guests (issue 14; protocol §14.6): the
//! `[guest_policy]` section of the config, changed at run time through the
//! control socket (`policy-set`), sent to every guest that takes it after
//! its handshake and again on every change, each time with a new version.
//! Fields left unset keep each guest's own value.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use thinagent_protocol::{
    EXCLUSION_HEADER_LEN, Exclusion, ExclusionKind, Exclusions, FailMode, MAX_DEBUG_LEVEL, OsKind,
    Policy,
};

use crate::config::ConfigError;
use crate::session::GuestPath;
use crate::state::{StateDir, StateError};

/// How long a guest has to answer a `Policy`, ms.
pub const POLICY_DEADLINE_MS: u32 = 10_000;

/// `open` or `closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailModeConfig {
    /// Allow what cannot be judged in time.
    Open,
    /// Deny it.
    Closed,
}

/// What an exclusion matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExclusionKindConfig {
    /// A path prefix (`/proc`, `\Device\HarddiskVolume2\pagefile.sys`).
    PathPrefix,
    /// A file extension without the dot (`log`).
    Extension,
    /// A process image name (`backup.exe`).
    Process,
}

/// One exclusion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExclusionConfig {
    /// What it matches.
    pub kind: ExclusionKindConfig,
    /// The prefix, extension or image name.
    pub value: String,
}

/// The `[guest_policy]` section: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuestPolicyConfig {
    /// What guests do with an open they cannot get a verdict for in time.
    pub fail_mode: Option<FailModeConfig>,
    /// Guests' log level, 0..=4.
    pub debug_level: Option<u8>,
    /// Replaces each guest's exclusion list.
    pub exclusions: Option<Vec<ExclusionConfig>>,
    /// Guests' deadline per on-access query, ms (≥ 1).
    pub query_timeout_ms: Option<u32>,
    /// Longest a guest keeps a verdict, seconds (0 = no caching).
    pub cache_ttl_max_secs: Option<u32>,
    /// Larger files are not queried (0 = no limit), bytes.
    pub max_scan_size: Option<u64>,
}

impl GuestPolicyConfig {
    /// `true` when it sets nothing (then no `Policy` is sent at all).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Checks the ranges §14.6 sets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(level) = self.debug_level
            && level > MAX_DEBUG_LEVEL
        {
            return Err(ConfigError::Invalid {
                key: "guest_policy.debug_level",
                value: level.to_string(),
                why: format!("must be 0..={MAX_DEBUG_LEVEL}"),
            });
        }
        if self.query_timeout_ms == Some(0) {
            return Err(ConfigError::Invalid {
                key: "guest_policy.query_timeout_ms",
                value: "0".into(),
                why: "must be at least 1".into(),
            });
        }
        for e in self.exclusions.iter().flatten() {
            if e.value.is_empty() || e.value.len() > 4096 {
                return Err(ConfigError::Invalid {
                    key: "guest_policy.exclusions",
                    value: format!("{:?}", e.value),
                    why: "an exclusion's value must have 1 to 4096 bytes".into(),
                });
            }
        }
        Ok(())
    }

    /// The `Policy` message of `version` for a guest running `os` (Windows
    /// guests get UTF-16 exclusions), its exclusions encoded into `buf`.
    pub fn to_message<'b>(&self, version: u64, os: OsKind, buf: &'b mut Vec<u8>) -> Policy<'b> {
        let exclusions = match &self.exclusions {
            None => None,
            Some(list) => {
                let wire: Vec<_> = list
                    .iter()
                    .map(|e| GuestPath::for_os(os, &e.value).to_wire_bytes())
                    .collect();
                let entries = list.iter().zip(&wire).map(|(e, w)| Exclusion {
                    kind: match e.kind {
                        ExclusionKindConfig::PathPrefix => ExclusionKind::PathPrefix,
                        ExclusionKindConfig::Extension => ExclusionKind::Extension,
                        ExclusionKindConfig::Process => ExclusionKind::ProcessImage,
                    },
                    value: w.as_file_path(),
                });
                buf.clear();
                buf.resize(
                    wire.iter()
                        .map(|w| w.as_file_path().as_bytes().len() + EXCLUSION_HEADER_LEN)
                        .sum(),
                    0,
                );
                // Validated values (1..=4096 bytes each) always encode.
                Some(Exclusions::write(entries, buf.as_mut_slice()).unwrap_or(Exclusions::EMPTY))
            }
        };
        Policy {
            version,
            deadline_ms: POLICY_DEADLINE_MS,
            fail_mode: self.fail_mode.map(|m| match m {
                FailModeConfig::Open => FailMode::Open,
                FailModeConfig::Closed => FailMode::Closed,
            }),
            debug_level: self.debug_level,
            exclusions,
            query_timeout_ms: self.query_timeout_ms,
            cache_ttl_max_secs: self.cache_ttl_max_secs,
            max_scan_size: self.max_scan_size,
        }
    }
}

/// The host's current guest policy and its version.
#[derive(Debug, Default)]
pub struct PolicyStore {
    current: Mutex<(u64, GuestPolicyConfig)>,
    /// Where a policy set at run time is kept across restarts.
    state: Option<Arc<StateDir>>,
    /// The config's `[guest_policy]` this store started from: what a policy
    /// saved at run time records it replaced.
    config_policy: GuestPolicyConfig,
}

/// The state file of the policy (`state_dir`).
pub const POLICY_STATE_FILE: &str = "guest-policy.json";

/// What `guest-policy.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SavedPolicy {
    /// The version in effect.
    version: u64,
    /// The policy set at run time.
    policy: GuestPolicyConfig,
    /// The config's `[guest_policy]` it replaced: when the config says
    /// something else at the next start, the config wins.
    config_policy: GuestPolicyConfig,
}

impl PolicyStore {
    /// A store starting from the config's policy (version 1 if it sets
    /// anything, else 0 = none); nothing is kept across restarts.
    pub fn new(initial: GuestPolicyConfig) -> Self {
        let version = u64::from(!initial.is_empty());
        Self {
            current: Mutex::new((version, initial.clone())),
            state: None,
            config_policy: initial,
        }
    }

    /// A store that keeps a policy set at run time in `state` and starts
    /// from the one kept there, unless the config's `[guest_policy]`
    /// (`initial`) changed since it was set: then the config's wins, with
    /// a version above the kept one (guests apply any other version).
    pub fn with_state(initial: GuestPolicyConfig, state: Arc<StateDir>) -> Self {
        let saved: Option<SavedPolicy> = state.load(POLICY_STATE_FILE);
        let config_policy = initial.clone();
        let current = match saved {
            Some(saved) if saved.config_policy == initial => {
                tracing::info!(
                    version = saved.version,
                    file = %state.dir().join(POLICY_STATE_FILE).display(),
                    "guest policy set at run time restored"
                );
                (saved.version, saved.policy)
            }
            Some(saved) => {
                tracing::warn!(
                    kept_version = saved.version,
                    file = %state.dir().join(POLICY_STATE_FILE).display(),
                    "the config's [guest_policy] changed since a policy was set at run time: the config's policy is used"
                );
                // Kept as the policy in effect, so the version stays above
                // every one guests have seen and a later change at run
                // time records this config as what it replaced.
                let now = SavedPolicy {
                    version: saved.version + 1,
                    policy: initial.clone(),
                    config_policy: initial,
                };
                if let Err(e) = state.save(POLICY_STATE_FILE, &now) {
                    tracing::warn!(error = %e, "guest policy state not updated");
                }
                (now.version, now.policy)
            }
            None => (u64::from(!initial.is_empty()), initial),
        };
        Self {
            current: Mutex::new(current),
            state: Some(state),
            config_policy,
        }
    }

    /// The version and the policy (version 0: none set).
    pub fn get(&self) -> (u64, GuestPolicyConfig) {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the policy; returns its new version. With a state
    /// directory the new policy is saved first, and one that cannot be
    /// saved changes nothing (a restart would silently undo it).
    pub fn set(&self, policy: GuestPolicyConfig) -> Result<u64, StateError> {
        let mut cur = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let version = cur.0 + 1;
        if let Some(state) = &self.state {
            state.save(
                POLICY_STATE_FILE,
                &SavedPolicy {
                    version,
                    policy: policy.clone(),
                    config_policy: self.config_policy.clone(),
                },
            )?;
        }
        *cur = (version, policy);
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use thinagent_protocol::{FilePath, Message, PolicyFields, decode_frame};

    use super::*;

    fn sample() -> GuestPolicyConfig {
        GuestPolicyConfig {
            fail_mode: Some(FailModeConfig::Closed),
            exclusions: Some(vec![
                ExclusionConfig {
                    kind: ExclusionKindConfig::PathPrefix,
                    value: "/proc".into(),
                },
                ExclusionConfig {
                    kind: ExclusionKindConfig::Extension,
                    value: "log".into(),
                },
            ]),
            max_scan_size: Some(1 << 20),
            ..Default::default()
        }
    }

    #[test]
    fn the_message_round_trips_for_both_path_encodings() {
        for os in [OsKind::Linux, OsKind::Windows] {
            let mut buf = Vec::new();
            let p = sample().to_message(3, os, &mut buf);
            assert_eq!(
                p.fields(),
                PolicyFields::FAIL_MODE
                    .union(PolicyFields::EXCLUSIONS)
                    .union(PolicyFields::MAX_SCAN_SIZE)
            );
            let mut frame = vec![0u8; 70_000];
            let n = Message::Policy(p).encode_for(2, 5, &mut frame).unwrap();
            let thinagent_protocol::Decoded::Frame { frame, .. } =
                decode_frame(&frame[..n]).unwrap()
            else {
                panic!()
            };
            let Message::Policy(back) = frame.message else {
                panic!()
            };
            let list: Vec<_> = back.exclusions.unwrap().iter().collect();
            assert_eq!(list.len(), 2);
            assert_eq!(list[1].kind, ExclusionKind::Extension);
            match os {
                OsKind::Windows => assert_eq!(
                    list[0].value,
                    FilePath::Utf16Le(&[b'/', 0, b'p', 0, b'r', 0, b'o', 0, b'c', 0])
                ),
                _ => assert_eq!(list[0].value, FilePath::Utf8("/proc")),
            }
        }
    }

    #[test]
    fn versions_start_at_1_when_configured_and_grow_on_every_change() {
        assert_eq!(PolicyStore::new(GuestPolicyConfig::default()).get().0, 0);
        let store = PolicyStore::new(sample());
        assert_eq!(store.get().0, 1);
        assert_eq!(store.set(GuestPolicyConfig::default()).unwrap(), 2);
        assert_eq!(store.get(), (2, GuestPolicyConfig::default()));
    }

    #[test]
    fn a_policy_set_at_run_time_survives_a_restart_unless_the_config_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let state = || Arc::new(StateDir::open(&tmp.path().join("state")).unwrap());
        let changed = GuestPolicyConfig {
            max_scan_size: Some(1000),
            ..sample()
        };
        let store = PolicyStore::with_state(sample(), state());
        assert_eq!(store.get(), (1, sample()));
        assert_eq!(store.set(changed.clone()).unwrap(), 2);
        // Restart with the same config: the run-time policy is back.
        let store = PolicyStore::with_state(sample(), state());
        assert_eq!(store.get(), (2, changed.clone()));
        assert_eq!(store.set(changed.clone()).unwrap(), 3);
        let store = PolicyStore::with_state(sample(), state());
        assert_eq!(store.get(), (3, changed));
        // The admin edited the config since: the config wins, with a
        // version the guests have not seen.
        let edited = GuestPolicyConfig {
            debug_level: Some(2),
            ..Default::default()
        };
        let store = PolicyStore::with_state(edited.clone(), state());
        assert_eq!(store.get(), (4, edited.clone()));
        // A later change remembers the edited config as what it replaced.
        store.set(GuestPolicyConfig::default()).unwrap();
        let store = PolicyStore::with_state(edited, state());
        assert_eq!(store.get(), (5, GuestPolicyConfig::default()));
    }

    #[test]
    fn ranges_are_checked() {
        let bad = GuestPolicyConfig {
            debug_level: Some(5),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("0..=4"));
        let bad = GuestPolicyConfig {
            query_timeout_ms: Some(0),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
