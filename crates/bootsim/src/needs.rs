//! The needs table: which driver creates which device and when, which
//! service needs which device, which thin agents the simulator can run, and
//! the simulation's virtual-time costs.
//!
//! This is knowledge the registry does not hold (vsock needs vmci's device;
//! the thin agents need vsock's). It lives in data, `data/needs.toml`
//! (embedded), which a user extends or overrides with a file of the same
//! format: [`NeedsTable::builtin`], then [`NeedsTable::merge`] with
//! [`NeedsTable::parse`] or [`NeedsTable::from_file`]. The format is documented
//! in `docs/boot-order.md`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thinagent_guest::NtStatus;
use thiserror::Error;

use crate::model::{DeviceInstance, Model, fold};

/// The built-in table's text (`data/needs.toml`).
pub const BUILTIN_NEEDS_TOML: &str = include_str!("../data/needs.toml");

/// When a driver creates a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Created {
    /// In its `DriverEntry`.
    DriverInit,
    /// When its PnP device stack starts.
    DeviceStart,
}

/// A device a driver creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDecl {
    /// The creating service.
    pub owner: String,
    /// The device object name, e.g. `\Device\VMCIHostDev`.
    pub name: String,
    /// Symbolic links to it (`\Global??\VMCIDev`); `\DosDevices\X` and `\??\X`
    /// are the same as `\Global??\X`.
    #[serde(default)]
    pub links: Vec<String>,
    /// When it appears.
    pub created: Created,
    /// The setup class of the owner's PnP device, used to synthesise a device
    /// instance when the registry has none for the owner (a `.reg` export
    /// without `Enum`).
    #[serde(default)]
    pub class_guid: Option<String>,
    /// For `device-start`: the `Enum` instance path (a prefix, e.g.
    /// `ROOT\VMWVMCIHOSTDEV`) of the owner's device whose start creates
    /// it, when the owner drives several devices. Without it, or on a
    /// machine with no such instance, the owner's first device start.
    #[serde(default)]
    pub instance: Option<String>,
}

impl DeviceDecl {
    /// `true` if `device_path` (relative to `Enum`) is `instance` or below it.
    #[must_use]
    pub fn instance_matches(&self, device_path: &str) -> bool {
        self.instance.as_deref().is_some_and(|i| {
            let (p, i) = (fold(device_path), fold(i.trim_end_matches('\\')));
            p == i || p.starts_with(&format!("{i}\\"))
        })
    }

    /// Whether the start of `device_path`, one of the owner's devices on a
    /// machine whose owner devices are `owner_devices`, creates this device.
    #[must_use]
    pub fn created_at_start_of<'a>(
        &self,
        device_path: &str,
        mut owner_devices: impl Iterator<Item = &'a str>,
    ) -> bool {
        if self.instance.is_none() || !owner_devices.any(|d| self.instance_matches(d)) {
            return true;
        }
        self.instance_matches(device_path)
    }
}

/// When a need applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NeedWhen {
    /// During the service's `DriverEntry`.
    Init,
    /// Only to serve its own clients.
    Use,
}

/// "`service` needs `device`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Need {
    /// The needing service.
    pub service: String,
    /// The needed device (name or link).
    pub device: String,
    /// When.
    pub when: NeedWhen,
    /// For `use` needs: the status the service answers its clients with
    /// while the device is missing (default `STATUS_DEVICE_BUSY`).
    #[serde(default)]
    pub busy_status: Option<u32>,
    /// Why, for messages.
    #[serde(default)]
    pub why: String,
}

impl Need {
    /// [`Need::busy_status`] as an [`NtStatus`].
    #[must_use]
    pub fn busy(&self) -> NtStatus {
        NtStatus(self.busy_status.unwrap_or(NtStatus::STATUS_DEVICE_BUSY.0))
    }
}

/// How a thin agent waits for its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentStyle {
    /// ThinAgent: `DriverEntry` succeeds at once, the bounded loop (first
    /// attempt immediately) runs in a worker thread, one more attempt from
    /// the boot-driver reinitialisation callback.
    DeferredRetry,
    /// VMware's vsepflt: the bounded loop inside `DriverEntry`, which fails
    /// when it is exhausted and holds back every later boot driver meanwhile.
    Blocking,
}

/// A thin agent the simulator can run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDecl {
    /// Its service name.
    pub service: String,
    /// How it waits.
    pub style: AgentStyle,
    /// The device it captures the provider from.
    pub device: String,
    /// Capture attempts (the connector's `max_attempts`).
    pub attempts: u32,
    /// Delay between attempts, ms.
    pub delay_ms: u64,
    /// Start type used when the machine lacks the service.
    #[serde(default)]
    pub default_start: Option<u32>,
    /// Group used when the machine lacks the service.
    #[serde(default)]
    pub default_group: Option<String>,
    /// The product name its load/fail audit lines print.
    #[serde(default)]
    pub name: Option<String>,
}

/// Virtual-time costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// An ordinary `DriverEntry`, ms.
    pub driver_init_ms: u64,
    /// One device stack start, ms.
    pub device_start_ms: u64,
    /// Per-service `DriverEntry` durations, ms (folded names).
    #[serde(default)]
    pub per_service: BTreeMap<String, u64>,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            driver_init_ms: 10,
            device_start_ms: 10,
            per_service: BTreeMap::new(),
        }
    }
}

impl Timing {
    /// `DriverEntry` duration of `service`, ms.
    #[must_use]
    pub fn init_ms(&self, service: &str) -> u64 {
        let s = fold(service);
        self.per_service
            .iter()
            .find(|(k, _)| fold(k) == s)
            .map_or(self.driver_init_ms, |(_, v)| *v)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NeedsFile {
    #[serde(default)]
    timing: Option<TimingPatch>,
    #[serde(default)]
    device: Vec<DeviceDecl>,
    #[serde(default)]
    need: Vec<Need>,
    #[serde(default)]
    agent: Vec<AgentDecl>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimingPatch {
    driver_init_ms: Option<u64>,
    device_start_ms: Option<u64>,
    #[serde(default)]
    per_service: BTreeMap<String, u64>,
}

/// A needs table could not be read.
#[derive(Debug, Error)]
pub enum NeedsError {
    /// Not valid TOML for this format.
    #[error("needs table {source_name}: {message} (see docs/boot-order.md, \"The needs table\")")]
    Parse {
        /// File name or `built-in`.
        source_name: String,
        /// The TOML error, with line and column.
        message: String,
    },
    /// An entry is inconsistent.
    #[error("needs table {source_name}: {message}")]
    Invalid {
        /// File name or `built-in`.
        source_name: String,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// The file could not be read.
    #[error("cannot read needs table {path}: {err}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        err: std::io::Error,
    },
}

/// The table. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NeedsTable {
    /// Devices and who creates them.
    pub devices: Vec<DeviceDecl>,
    /// Who needs which device.
    pub needs: Vec<Need>,
    /// Thin agents.
    pub agents: Vec<AgentDecl>,
    /// Virtual time.
    pub timing: Timing,
}

/// Canonical form of an object-manager name: folded, `\DosDevices\` and `\??\`
/// written as `\global??\`.
#[must_use]
pub fn canonical_object_name(name: &str) -> String {
    let n = fold(name);
    for alias in [r"\dosdevices\", r"\??\"] {
        if let Some(rest) = n.strip_prefix(alias) {
            return format!(r"\global??\{rest}");
        }
    }
    n
}

impl NeedsTable {
    /// An empty table with default timing.
    #[must_use]
    pub fn empty() -> Self {
        NeedsTable {
            devices: Vec::new(),
            needs: Vec::new(),
            agents: Vec::new(),
            timing: Timing::default(),
        }
    }

    /// The built-in table (`data/needs.toml`).
    #[must_use]
    pub fn builtin() -> Self {
        // The embedded file is checked by a unit test.
        Self::parse(BUILTIN_NEEDS_TOML, "built-in").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Parses a table; `source_name` names it in errors.
    ///
    /// # Errors
    /// [`NeedsError::Parse`] for TOML or schema errors (unknown keys included),
    /// [`NeedsError::Invalid`] for inconsistent entries.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, NeedsError> {
        let file: NeedsFile = toml::from_str(text).map_err(|e| NeedsError::Parse {
            source_name: source_name.to_string(),
            message: e.to_string().trim().to_string(),
        })?;
        let mut t = NeedsTable::empty();
        t.apply(file);
        t.validate(source_name)?;
        Ok(t)
    }

    /// Reads and parses a table file.
    ///
    /// # Errors
    /// [`NeedsError::Io`] or as [`NeedsTable::parse`].
    pub fn from_file(path: &Path) -> Result<Self, NeedsError> {
        let text = std::fs::read_to_string(path).map_err(|err| NeedsError::Io {
            path: path.display().to_string(),
            err,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The built-in table extended by the user's table text.
    ///
    /// # Errors
    /// As [`NeedsTable::parse`].
    pub fn builtin_extended(extra: &str, source_name: &str) -> Result<Self, NeedsError> {
        let mut t = Self::builtin();
        t.merge(Self::parse(extra, source_name)?);
        Ok(t)
    }

    fn apply(&mut self, file: NeedsFile) {
        if let Some(p) = file.timing {
            if let Some(v) = p.driver_init_ms {
                self.timing.driver_init_ms = v;
            }
            if let Some(v) = p.device_start_ms {
                self.timing.device_start_ms = v;
            }
            for (k, v) in p.per_service {
                self.timing.per_service.insert(fold(&k), v);
            }
        }
        let other = NeedsTable {
            devices: file.device,
            needs: file.need,
            agents: file.agent,
            timing: self.timing.clone(),
        };
        self.merge_entries(other);
    }

    /// Adds `other`'s entries; an entry with the same key (device name; need
    /// service + device; agent service) replaces this table's. `other`'s
    /// timing replaces this table's timing only where it differs from the
    /// default (per-service entries are added).
    pub fn merge(&mut self, other: NeedsTable) {
        let def = Timing::default();
        if other.timing.driver_init_ms != def.driver_init_ms {
            self.timing.driver_init_ms = other.timing.driver_init_ms;
        }
        if other.timing.device_start_ms != def.device_start_ms {
            self.timing.device_start_ms = other.timing.device_start_ms;
        }
        for (k, v) in &other.timing.per_service {
            self.timing.per_service.insert(k.clone(), *v);
        }
        self.merge_entries(other);
    }

    fn merge_entries(&mut self, other: NeedsTable) {
        for d in other.devices {
            let key = canonical_object_name(&d.name);
            self.devices
                .retain(|x| canonical_object_name(&x.name) != key);
            self.devices.push(d);
        }
        for n in other.needs {
            let (s, dv) = (fold(&n.service), canonical_object_name(&n.device));
            self.needs
                .retain(|x| !(fold(&x.service) == s && canonical_object_name(&x.device) == dv));
            self.needs.push(n);
        }
        for a in other.agents {
            let s = fold(&a.service);
            self.agents.retain(|x| fold(&x.service) != s);
            self.agents.push(a);
        }
    }

    fn validate(&self, source_name: &str) -> Result<(), NeedsError> {
        let invalid = |message: String| NeedsError::Invalid {
            source_name: source_name.to_string(),
            message,
        };
        for d in &self.devices {
            if d.owner.trim().is_empty() || !d.name.starts_with('\\') {
                return Err(invalid(format!(
                    "[[device]] owner {:?} name {:?}: needs an owner service and an object name starting with a backslash, e.g. '\\Device\\VMCIHostDev'",
                    d.owner, d.name
                )));
            }
            if let Some(g) = &d.class_guid
                && !(g.starts_with('{') && g.ends_with('}') && g.len() == 38)
            {
                return Err(invalid(format!(
                    "[[device]] {}: class_guid {g:?} must be a braced GUID like \"{{4d36e97d-e325-11ce-bfc1-08002be10318}}\"",
                    d.name
                )));
            }
        }
        for n in &self.needs {
            if n.service.trim().is_empty() || !n.device.starts_with('\\') {
                return Err(invalid(format!(
                    "[[need]] service {:?} device {:?}: needs a service and an object name starting with a backslash",
                    n.service, n.device
                )));
            }
        }
        for a in &self.agents {
            if a.attempts == 0 || a.delay_ms == 0 {
                return Err(invalid(format!(
                    "[[agent]] {}: attempts and delay_ms must be at least 1",
                    a.service
                )));
            }
        }
        Ok(())
    }

    /// The device declared under `name` (a device name or one of its links).
    #[must_use]
    pub fn device(&self, name: &str) -> Option<&DeviceDecl> {
        let n = canonical_object_name(name);
        self.devices.iter().find(|d| {
            canonical_object_name(&d.name) == n
                || d.links.iter().any(|l| canonical_object_name(l) == n)
        })
    }

    /// The needs of `service`.
    pub fn needs_of<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a Need> {
        let s = fold(service);
        self.needs.iter().filter(move |n| fold(&n.service) == s)
    }

    /// The agent declared for `service`.
    #[must_use]
    pub fn agent(&self, service: &str) -> Option<&AgentDecl> {
        let s = fold(service);
        self.agents.iter().find(|a| fold(&a.service) == s)
    }

    /// Adds a synthetic device instance for every declared device-start
    /// device whose owner is in the model but has no `Enum` instance, using
    /// the declared `class_guid`, so class filters still apply to it.
    pub fn add_hinted_devices(&self, model: &mut Model) {
        for d in &self.devices {
            let (Created::DeviceStart, Some(class)) = (d.created, d.class_guid.as_ref()) else {
                continue;
            };
            let Some(owner) = model.service(&d.owner) else {
                continue;
            };
            if model.devices_of(&d.owner).next().is_some() {
                continue;
            }
            let owner = owner.name.clone();
            model.devices.push(DeviceInstance {
                path: format!(r"(needs table)\{owner}\0000"),
                service: Some(owner),
                class_guid: Some(class.clone()),
                upper_filters: Vec::new(),
                lower_filters: Vec::new(),
                synthetic: true,
            });
        }
    }
}

impl Default for NeedsTable {
    fn default() -> Self {
        Self::builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_parses_and_has_the_seed_facts() {
        let t = NeedsTable::builtin();
        let vmci = t.device(r"\DosDevices\VMCIDev").expect("link resolves");
        assert_eq!(vmci.owner, "vmci");
        assert_eq!(vmci.created, Created::DeviceStart);
        assert_eq!(t.device(r"\Device\vmci").unwrap().owner, "vsock");
        let vsock_need = t.needs_of("vsock").next().unwrap();
        assert_eq!(vsock_need.when, NeedWhen::Use);
        assert_eq!(vsock_need.busy(), NtStatus::STATUS_DEVICE_BUSY);
        assert_eq!(
            t.agent("THINAGENT").unwrap().style,
            AgentStyle::DeferredRetry
        );
        assert_eq!(t.agent("vsepflt").unwrap().style, AgentStyle::Blocking);
        assert_eq!(t.timing.init_ms("anything"), 10);
    }

    #[test]
    fn user_file_extends_and_overrides() {
        let extra = r#"
            [timing]
            driver_init_ms = 20
            [timing.per_service]
            VMCI = 50
            [[need]]
            service = "myagent"
            device = '\Device\vmci'
            when = "init"
            [[agent]]
            service = "vsepflt"
            style = "blocking"
            device = '\Device\vmci'
            attempts = 5
            delay_ms = 200
        "#;
        let t = NeedsTable::builtin_extended(extra, "mine.toml").unwrap();
        assert_eq!(t.timing.driver_init_ms, 20);
        assert_eq!(t.timing.init_ms("vmci"), 50);
        assert_eq!(t.agent("vsepflt").unwrap().attempts, 5);
        assert_eq!(t.agents.len(), 2);
        assert_eq!(t.needs_of("myagent").count(), 1);
        assert_eq!(t.needs_of("vsepflt").count(), 1);
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let e = NeedsTable::parse("[[need]]\nservice = \"x\"\ndevise = 'y'\n", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml") && e.contains("devise"), "{e}");
        let e = NeedsTable::parse(
            "[[device]]\nowner = \"x\"\nname = 'Device'\ncreated = \"driver-init\"\n",
            "bad2.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("backslash"), "{e}");
    }

    #[test]
    fn object_name_aliases() {
        assert_eq!(
            canonical_object_name(r"\DosDevices\vmci"),
            r"\global??\vmci"
        );
        assert_eq!(canonical_object_name(r"\??\vmci"), r"\global??\vmci");
        assert_eq!(canonical_object_name(r"\Global??\VMCI"), r"\global??\vmci");
    }
}
