//! The machine's boot configuration as the boot loader and the I/O manager
//! read it from one control set: services, the group list, the tag vectors,
//! class filters and PnP device instances.
//!
//! Build it with [`Model::from_control_set`] from the [`RegKey`] of the control
//! set the machine boots with (the key holding `Services`, `Control` and
//! `Enum`). Values of the wrong type are not fatal: they are skipped and
//! reported in [`Model::warnings`], because a real machine boots with them too.

use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;

use crate::registry::{RegKey, RegValue};

/// The System setup class, `{4d36e97d-e325-11ce-bfc1-08002be10318}`: the class
/// of vmci's PnP device in the seed.
pub const SYSTEM_CLASS_GUID: &str = "{4d36e97d-e325-11ce-bfc1-08002be10318}";

/// Folds a name the way the model compares them (case-insensitive).
#[must_use]
pub fn fold(name: &str) -> String {
    name.trim().to_lowercase()
}

/// A service's `Start` value (after `StartOverride`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartType {
    /// `SERVICE_BOOT_START` (0): loaded by the boot loader, initialised by
    /// `IopInitializeBootDrivers`.
    Boot,
    /// `SERVICE_SYSTEM_START` (1): loaded and initialised by
    /// `IopInitializeSystemDrivers` after every boot-start driver.
    System,
    /// `SERVICE_AUTO_START` (2): started by the service control manager.
    Auto,
    /// `SERVICE_DEMAND_START` (3): started on demand (by the PnP manager for a
    /// device, or by `StartService`).
    Demand,
    /// `SERVICE_DISABLED` (4): never started.
    Disabled,
    /// Any other number.
    Other(u32),
}

impl StartType {
    /// From the registry number.
    #[must_use]
    pub const fn from_u32(v: u32) -> Self {
        match v {
            0 => StartType::Boot,
            1 => StartType::System,
            2 => StartType::Auto,
            3 => StartType::Demand,
            4 => StartType::Disabled,
            n => StartType::Other(n),
        }
    }

    /// The registry number.
    #[must_use]
    pub const fn as_u32(self) -> u32 {
        match self {
            StartType::Boot => 0,
            StartType::System => 1,
            StartType::Auto => 2,
            StartType::Demand => 3,
            StartType::Disabled => 4,
            StartType::Other(n) => n,
        }
    }

    /// The short name LoadOrd and `sc qc` print (`boot`, `system`, `auto`,
    /// `demand`, `disabled`, or the number).
    #[must_use]
    pub fn name(self) -> String {
        match self {
            StartType::Boot => "boot".into(),
            StartType::System => "system".into(),
            StartType::Auto => "auto".into(),
            StartType::Demand => "demand".into(),
            StartType::Disabled => "disabled".into(),
            StartType::Other(n) => n.to_string(),
        }
    }

    /// `true` for boot- and system-start, the two start types the kernel
    /// initialises itself (in group and tag order) before the service control
    /// manager runs.
    #[must_use]
    pub const fn is_kernel_initialised(self) -> bool {
        matches!(self, StartType::Boot | StartType::System)
    }
}

/// One minifilter instance (`Services\<name>\Instances\<instance>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MinifilterInstance {
    /// The instance key's name.
    pub name: String,
    /// Its `Altitude` string as written (an infinite-precision decimal).
    pub altitude: Option<String>,
}

/// One service key under `Services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// The key name as written (the service name).
    pub name: String,
    /// `Type` (1 kernel driver, 2 file-system driver, 8 recognizer, 0x10/0x20
    /// Win32 services); `None` when absent.
    pub kind: Option<u32>,
    /// Effective start type (after `StartOverride`); `None` when `Start` is absent.
    pub start: Option<StartType>,
    /// `Start` as written, when a `StartOverride` changed it.
    pub start_before_override: Option<StartType>,
    /// `ErrorControl`.
    pub error_control: Option<u32>,
    /// `Group` (empty strings are treated as no group).
    pub group: Option<String>,
    /// `Tag`.
    pub tag: Option<u32>,
    /// `ImagePath` as written, or `System32\drivers\<name>.sys` when absent.
    pub image_path: String,
    /// `true` when `ImagePath` was absent and [`Service::image_path`] is the default.
    pub image_path_defaulted: bool,
    /// `DependOnService`.
    pub depend_on_service: Vec<String>,
    /// `DependOnGroup`.
    pub depend_on_group: Vec<String>,
    /// Minifilter instances (`Instances\*`), empty for other drivers.
    pub instances: Vec<MinifilterInstance>,
}

impl Service {
    /// `true` if the service is a driver (Type 1, 2 or 8, or no Type at all),
    /// i.e. something the kernel, not the service control manager, starts.
    #[must_use]
    pub fn is_driver(&self) -> bool {
        match self.kind {
            None => true,
            Some(k) => k & 0x0B != 0 && k & 0x30 == 0,
        }
    }
}

/// `UpperFilters`/`LowerFilters` of one setup class (`Control\Class\{GUID}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassFilters {
    /// The class GUID as written (with braces).
    pub guid: String,
    /// The class's `Class` value (e.g. `System`), if present.
    pub class_name: Option<String>,
    /// `UpperFilters`.
    pub upper: Vec<String>,
    /// `LowerFilters`.
    pub lower: Vec<String>,
}

/// One PnP device instance under `Enum` (`Enum\<enumerator>\<device>\<instance>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInstance {
    /// The instance path relative to `Enum`, e.g. `ROOT\SYSTEM\0001`.
    pub path: String,
    /// `Service`: the function driver.
    pub service: Option<String>,
    /// `ClassGUID`.
    pub class_guid: Option<String>,
    /// Device-level `UpperFilters`.
    pub upper_filters: Vec<String>,
    /// Device-level `LowerFilters`.
    pub lower_filters: Vec<String>,
    /// `true` when the instance comes from a needs-table class hint, not
    /// from `Enum` (see [`crate::needs::DeviceDecl::class_guid`]).
    pub synthetic: bool,
}

/// Options for reading a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelOptions {
    /// The hardware configuration whose `StartOverride\<id>` value applies
    /// (`HardwareConfig\LastId` in the SYSTEM hive, outside the control set;
    /// 0 on almost every machine).
    pub hardware_config: u32,
}

/// Why a registry tree cannot be read as a control set.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ModelError {
    /// No `Services` key under the given root.
    #[error(
        "the key `{root}` has no `Services` subkey: pass the control set key (e.g. HKLM\\SYSTEM\\ControlSet001 or CurrentControlSet), not the hive root or a service key"
    )]
    NoServices {
        /// The root key's name.
        root: String,
    },
}

/// The machine's boot configuration. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Model {
    /// Services by folded name.
    pub services: BTreeMap<String, Service>,
    /// `Control\ServiceGroupOrder\List`, in order.
    pub group_order: Vec<String>,
    /// `Control\GroupOrderList` tag vectors, by folded group name.
    pub group_tags: BTreeMap<String, Vec<u32>>,
    /// `Control\Class\{GUID}` filters, by folded GUID (only classes with filters
    /// or a name).
    pub classes: BTreeMap<String, ClassFilters>,
    /// Device instances under `Enum` that name a service or class.
    pub devices: Vec<DeviceInstance>,
    /// Values that were present but unusable (wrong type, short data).
    pub warnings: Vec<String>,
}

impl Model {
    /// Reads the control-set key `root` with default [`ModelOptions`].
    pub fn from_control_set(root: &RegKey) -> Result<Model, ModelError> {
        Self::from_control_set_with(root, ModelOptions::default())
    }

    /// Reads the control-set key `root`.
    pub fn from_control_set_with(root: &RegKey, opts: ModelOptions) -> Result<Model, ModelError> {
        let services_key = root.key("Services").ok_or_else(|| ModelError::NoServices {
            root: root.name().to_string(),
        })?;
        let mut warnings = Vec::new();
        let mut services = BTreeMap::new();
        for key in services_key.subkeys() {
            let s = read_service(key, opts, &mut warnings);
            services.insert(fold(&s.name), s);
        }

        let group_order = match root.key(r"Control\ServiceGroupOrder") {
            Some(k) => match k.value("List") {
                Some(v) => match v.as_strings() {
                    Some(list) => list
                        .into_iter()
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                    None => {
                        warnings.push(format!(
                            "Control\\ServiceGroupOrder\\List is type {} not REG_MULTI_SZ: no group order",
                            v.kind()
                        ));
                        Vec::new()
                    }
                },
                None => Vec::new(),
            },
            None => Vec::new(),
        };

        let mut group_tags = BTreeMap::new();
        if let Some(k) = root.key(r"Control\GroupOrderList") {
            for (name, value) in k.values() {
                match parse_tag_vector(value) {
                    Ok(v) => {
                        group_tags.insert(fold(name), v);
                    }
                    Err(why) => warnings.push(format!(
                        "Control\\GroupOrderList\\{name}: {why}; its drivers' tags are treated as not in the vector"
                    )),
                }
            }
        }

        let mut classes = BTreeMap::new();
        if let Some(k) = root.key(r"Control\Class") {
            for class in k.subkeys() {
                let c = ClassFilters {
                    guid: class.name().to_string(),
                    class_name: class.string("Class").map(str::to_string),
                    upper: strings(class, "UpperFilters", &mut warnings),
                    lower: strings(class, "LowerFilters", &mut warnings),
                };
                classes.insert(fold(&c.guid), c);
            }
        }

        let mut devices = Vec::new();
        if let Some(enum_key) = root.key("Enum") {
            for enumerator in enum_key.subkeys() {
                for device in enumerator.subkeys() {
                    for instance in device.subkeys() {
                        let service = instance
                            .string("Service")
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_string);
                        let class_guid = instance
                            .string("ClassGUID")
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_string);
                        if service.is_none() && class_guid.is_none() {
                            continue;
                        }
                        devices.push(DeviceInstance {
                            path: format!(
                                "{}\\{}\\{}",
                                enumerator.name(),
                                device.name(),
                                instance.name()
                            ),
                            service,
                            class_guid,
                            upper_filters: strings(instance, "UpperFilters", &mut warnings),
                            lower_filters: strings(instance, "LowerFilters", &mut warnings),
                            synthetic: false,
                        });
                    }
                }
            }
        }

        Ok(Model {
            services,
            group_order,
            group_tags,
            classes,
            devices,
            warnings,
        })
    }

    /// The service called `name` (case-insensitive).
    #[must_use]
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(&fold(name))
    }

    /// The position (0-based) of `group` in `ServiceGroupOrder\List`.
    #[must_use]
    pub fn group_index(&self, group: &str) -> Option<usize> {
        let g = fold(group);
        self.group_order.iter().position(|x| fold(x) == g)
    }

    /// The group's name as the machine's list spells it.
    #[must_use]
    pub fn group_spelling(&self, index: usize) -> Option<&str> {
        self.group_order.get(index).map(String::as_str)
    }

    /// The `GroupOrderList` tag vector of `group`, if any.
    #[must_use]
    pub fn tag_vector(&self, group: &str) -> Option<&[u32]> {
        self.group_tags.get(&fold(group)).map(Vec::as_slice)
    }

    /// The filters of class `guid` (case-insensitive, braces required).
    #[must_use]
    pub fn class(&self, guid: &str) -> Option<&ClassFilters> {
        self.classes.get(&fold(guid))
    }

    /// Device instances whose function driver is `service`.
    pub fn devices_of<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a DeviceInstance> {
        let s = fold(service);
        self.devices
            .iter()
            .filter(move |d| d.service.as_deref().is_some_and(|x| fold(x) == s))
    }

    /// Adds (or replaces) a service; used by the simulator to place an agent
    /// that the machine does not have, and by tests.
    pub fn insert_service(&mut self, service: Service) {
        self.services.insert(fold(&service.name), service);
    }
}

fn strings(key: &RegKey, name: &str, warnings: &mut Vec<String>) -> Vec<String> {
    match key.value(name) {
        None => Vec::new(),
        Some(v) => match v.as_strings() {
            Some(list) => list
                .into_iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            None => {
                warnings.push(format!(
                    "{}\\{name} is type {} not REG_MULTI_SZ; ignored",
                    key.name(),
                    v.kind()
                ));
                Vec::new()
            }
        },
    }
}

/// Parses a `GroupOrderList` value: a DWORD count, then that many DWORD tags.
///
/// # Errors
/// A description when the value is not binary or shorter than its count says.
pub fn parse_tag_vector(value: &RegValue) -> Result<Vec<u32>, String> {
    let data = value
        .as_bytes()
        .ok_or_else(|| format!("type {} is not REG_BINARY", value.kind()))?;
    if data.len() < 4 {
        return Err(format!("{} bytes, too short for the tag count", data.len()));
    }
    let count = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let tags: Vec<u32> = data[4..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if tags.len() < count {
        return Err(format!(
            "count {count} but only {} tags in {} bytes",
            tags.len(),
            data.len()
        ));
    }
    Ok(tags.into_iter().take(count).collect())
}

/// Encodes a tag vector as `GroupOrderList` stores it (for tests and fixtures).
#[must_use]
pub fn encode_tag_vector(tags: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * tags.len());
    out.extend_from_slice(&(tags.len() as u32).to_le_bytes());
    for t in tags {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out
}

fn dword(key: &RegKey, name: &str, warnings: &mut Vec<String>) -> Option<u32> {
    let v = key.value(name)?;
    let d = v.as_dword();
    if d.is_none() {
        warnings.push(format!(
            "Services\\{}\\{name} is type {} not REG_DWORD; ignored",
            key.name(),
            v.kind()
        ));
    }
    d
}

fn read_service(key: &RegKey, opts: ModelOptions, warnings: &mut Vec<String>) -> Service {
    let name = key.name().to_string();
    let written_start = dword(key, "Start", warnings).map(StartType::from_u32);
    let overridden = key
        .key("StartOverride")
        .and_then(|o| o.dword(&opts.hardware_config.to_string()))
        .map(StartType::from_u32);
    let (start, start_before_override) = match overridden {
        Some(o) if Some(o) != written_start => (Some(o), written_start),
        _ => (written_start, None),
    };
    let group = key
        .string("Group")
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string);
    let (image_path, image_path_defaulted) = match key.string("ImagePath") {
        Some(p) if !p.trim().is_empty() => (p.trim().to_string(), false),
        _ => (format!("System32\\drivers\\{name}.sys"), true),
    };
    let mut instances = Vec::new();
    if let Some(inst) = key.key("Instances") {
        for i in inst.subkeys() {
            instances.push(MinifilterInstance {
                name: i.name().to_string(),
                altitude: i.string("Altitude").map(|a| a.trim().to_string()),
            });
        }
    }
    Service {
        kind: dword(key, "Type", warnings),
        start,
        start_before_override,
        error_control: dword(key, "ErrorControl", warnings),
        group,
        tag: dword(key, "Tag", warnings),
        image_path,
        image_path_defaulted,
        depend_on_service: strings(key, "DependOnService", warnings),
        depend_on_group: strings(key, "DependOnGroup", warnings),
        instances,
        name,
    }
}

/// Builds control-set trees programmatically (tests, examples, the
/// simulator's what-if edits). Every method returns `&mut Self`.
#[derive(Debug, Clone)]
pub struct ControlSetBuilder {
    root: RegKey,
}

impl Default for ControlSetBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlSetBuilder {
    /// An empty `ControlSet001` with an empty `Services` key.
    #[must_use]
    pub fn new() -> Self {
        let mut root = RegKey::new("ControlSet001");
        root.key_mut_or_create("Services");
        ControlSetBuilder { root }
    }

    /// Sets `Control\ServiceGroupOrder\List`.
    pub fn group_order(&mut self, groups: &[&str]) -> &mut Self {
        self.root
            .key_mut_or_create(r"Control\ServiceGroupOrder")
            .set_value(
                "List",
                RegValue::MultiSz(groups.iter().map(|s| s.to_string()).collect()),
            );
        self
    }

    /// Sets `Control\GroupOrderList\<group>` to `tags`.
    pub fn tag_vector(&mut self, group: &str, tags: &[u32]) -> &mut Self {
        self.root
            .key_mut_or_create(r"Control\GroupOrderList")
            .set_value(group, RegValue::Binary(encode_tag_vector(tags)));
        self
    }

    /// Adds a kernel driver (Type 1, ErrorControl 1) with `start`, optional
    /// group and tag.
    pub fn driver(
        &mut self,
        name: &str,
        start: u32,
        group: Option<&str>,
        tag: Option<u32>,
    ) -> &mut Self {
        let k = self.service_key(name);
        k.set_value("Type", RegValue::Dword(1));
        k.set_value("Start", RegValue::Dword(start));
        k.set_value("ErrorControl", RegValue::Dword(1));
        if let Some(g) = group {
            k.set_value("Group", RegValue::Sz(g.into()));
        }
        if let Some(t) = tag {
            k.set_value("Tag", RegValue::Dword(t));
        }
        self
    }

    /// The service key `Services\<name>` for arbitrary values.
    pub fn service_key(&mut self, name: &str) -> &mut RegKey {
        self.root.key_mut_or_create(&format!("Services\\{name}"))
    }

    /// Adds a minifilter instance with `altitude` to service `name`.
    pub fn minifilter_instance(&mut self, name: &str, instance: &str, altitude: &str) -> &mut Self {
        self.root
            .key_mut_or_create(&format!("Services\\{name}\\Instances\\{instance}"))
            .set_value("Altitude", RegValue::Sz(altitude.into()));
        self
    }

    /// Sets a class's `Class` name and filters.
    pub fn class(&mut self, guid: &str, name: &str, upper: &[&str], lower: &[&str]) -> &mut Self {
        let k = self
            .root
            .key_mut_or_create(&format!("Control\\Class\\{guid}"));
        k.set_value("Class", RegValue::Sz(name.into()));
        let list = |l: &[&str]| RegValue::MultiSz(l.iter().map(|s| s.to_string()).collect());
        if !upper.is_empty() {
            k.set_value("UpperFilters", list(upper));
        }
        if !lower.is_empty() {
            k.set_value("LowerFilters", list(lower));
        }
        self
    }

    /// Adds a device instance at `Enum\<path>` with its function driver and class.
    pub fn device(&mut self, path: &str, service: &str, class_guid: &str) -> &mut Self {
        let k = self.root.key_mut_or_create(&format!("Enum\\{path}"));
        k.set_value("Service", RegValue::Sz(service.into()));
        k.set_value("ClassGUID", RegValue::Sz(class_guid.into()));
        self
    }

    /// Sets device-level filters on `Enum\<path>`.
    pub fn device_filters(&mut self, path: &str, upper: &[&str], lower: &[&str]) -> &mut Self {
        let k = self.root.key_mut_or_create(&format!("Enum\\{path}"));
        let list = |l: &[&str]| RegValue::MultiSz(l.iter().map(|s| s.to_string()).collect());
        if !upper.is_empty() {
            k.set_value("UpperFilters", list(upper));
        }
        if !lower.is_empty() {
            k.set_value("LowerFilters", list(lower));
        }
        self
    }

    /// The tree built so far.
    #[must_use]
    pub fn root(&self) -> &RegKey {
        &self.root
    }

    /// The tree, mutable.
    pub fn root_mut(&mut self) -> &mut RegKey {
        &mut self.root
    }

    /// The tree, consumed.
    #[must_use]
    pub fn build(&self) -> RegKey {
        self.root.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_services_groups_tags_classes_devices() {
        let mut b = ControlSetBuilder::new();
        b.group_order(&["Boot Bus Extender", "System Bus Extender"])
            .tag_vector("System Bus Extender", &[3, 1])
            .driver("vmci", 0, Some("System Bus Extender"), Some(1))
            .class(SYSTEM_CLASS_GUID, "System", &["prodflt"], &[])
            .device(r"PCI\VEN_15AD&DEV_0740\3&1", "vmci", SYSTEM_CLASS_GUID);
        b.service_key("vsock")
            .set_value("DependOnService", RegValue::Sz("vmci".into()));
        b.service_key("over").set_value("Start", RegValue::Dword(3));
        b.service_key(r"over\StartOverride")
            .set_value("0", RegValue::Dword(0));
        let m = Model::from_control_set(b.root()).unwrap();
        let vmci = m.service("VMCI").unwrap();
        assert_eq!(vmci.start, Some(StartType::Boot));
        assert_eq!(vmci.image_path, r"System32\drivers\vmci.sys");
        assert!(vmci.image_path_defaulted);
        assert_eq!(m.group_index("system bus extender"), Some(1));
        assert_eq!(m.tag_vector("SYSTEM BUS EXTENDER"), Some(&[3, 1][..]));
        assert_eq!(m.class(SYSTEM_CLASS_GUID).unwrap().upper, ["prodflt"]);
        assert_eq!(m.devices_of("vmci").count(), 1);
        assert_eq!(m.service("vsock").unwrap().depend_on_service, ["vmci"]);
        let over = m.service("over").unwrap();
        assert_eq!(over.start, Some(StartType::Boot));
        assert_eq!(over.start_before_override, Some(StartType::Demand));
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }

    #[test]
    fn no_services_is_an_error_that_says_what_to_pass() {
        let err = Model::from_control_set(&RegKey::new("SYSTEM")).unwrap_err();
        assert!(err.to_string().contains("ControlSet001"));
    }

    #[test]
    fn tag_vector_count_rules() {
        assert_eq!(
            parse_tag_vector(&RegValue::Binary(encode_tag_vector(&[5, 6]))),
            Ok(vec![5, 6])
        );
        // Extra trailing tags beyond the count are ignored.
        let mut data = encode_tag_vector(&[5]);
        data.extend_from_slice(&7u32.to_le_bytes());
        assert_eq!(parse_tag_vector(&RegValue::Binary(data)), Ok(vec![5]));
        assert!(parse_tag_vector(&RegValue::Binary(vec![2, 0, 0, 0, 1, 0, 0, 0])).is_err());
        assert!(parse_tag_vector(&RegValue::Dword(1)).is_err());
    }

    #[test]
    fn wrong_types_are_warnings_not_errors() {
        let mut b = ControlSetBuilder::new();
        b.service_key("x")
            .set_value("Start", RegValue::Sz("0".into()));
        b.root_mut()
            .key_mut_or_create(r"Control\GroupOrderList")
            .set_value("Base", RegValue::Dword(3));
        let m = Model::from_control_set(b.root()).unwrap();
        assert_eq!(m.service("x").unwrap().start, None);
        assert_eq!(m.warnings.len(), 2, "{:?}", m.warnings);
    }
}

/// The seed incident's two machines, built programmatically: a Windows 7 /
/// 2008 R2 guest with VMware Tools (vmci and vsock boot-start in "System Bus
/// Extender", vmci's PnP device of the System class), VMware's thin agent
/// `vsepflt` (boot-start, "FSFilter Anti-Virus") and, when `product_filter`
/// is `true`, a third-party product with a boot-start minifilter `dlpflt`
/// ("FSFilter Activity Monitor") and a boot-start device filter driver
/// `dlpdev` ("Base") registered as an upper filter of the System class.
pub mod seed {
    use super::{ControlSetBuilder, SYSTEM_CLASS_GUID};
    use crate::registry::RegKey;

    /// `ServiceGroupOrder\List` of a Windows 7 / 2008 R2 machine.
    pub const WIN7_GROUP_ORDER: &[&str] = &[
        "System Reserved",
        "EMS",
        "WdfLoadGroup",
        "Boot Bus Extender",
        "System Bus Extender",
        "SCSI miniport",
        "Port",
        "Primary Disk",
        "SCSI Class",
        "SCSI CDROM Class",
        "FSFilter Infrastructure",
        "FSFilter System",
        "FSFilter Bottom",
        "FSFilter Copy Protection",
        "FSFilter Security Enhancer",
        "FSFilter Open File",
        "FSFilter Physical Quota Management",
        "FSFilter Virtualization",
        "FSFilter Encryption",
        "FSFilter Compression",
        "FSFilter Imaging",
        "FSFilter HSM",
        "FSFilter Cluster File System",
        "FSFilter System Recovery",
        "FSFilter Quota Management",
        "FSFilter Content Screener",
        "FSFilter Continuous Backup",
        "FSFilter Replication",
        "FSFilter Anti-Virus",
        "FSFilter Undelete",
        "FSFilter Activity Monitor",
        "FSFilter Top",
        "Filter",
        "Boot File System",
        "Base",
        "Pointer Port",
        "Keyboard Port",
        "Pointer Class",
        "Keyboard Class",
        "Video Init",
        "Video",
        "Video Save",
        "File System",
        "Streams Drivers",
        "NDIS Wrapper",
        "COM Infrastructure",
        "Event Log",
        "AudioGroup",
        "ProfSvc_Group",
        "UIGroup",
        "MS_WindowsLocalValidation",
        "PlugPlay",
        "Cryptography",
        "PNP_TDI",
        "NDIS",
        "TDI",
        "iSCSI",
        "NetBIOSGroup",
        "ShellSvcGroup",
        "SchedulerGroup",
        "SpoolerGroup",
        "SmartCardGroup",
        "NetworkProvider",
        "RemoteValidation",
        "NetDDEGroup",
        "Parallel arbitrator",
        "Extended Base",
        "PCI Configuration",
        "MS Transactions",
    ];

    /// The PCI instance path of vmci's device.
    pub const VMCI_DEVICE: &str = r"PCI\VEN_15AD&DEV_0740&SUBSYS_074015AD&REV_10\3&61aaa01&0&3F";

    /// The seed machine; with or without the product's System-class upper filter.
    #[must_use]
    pub fn machine(product_filter: bool) -> RegKey {
        let mut b = ControlSetBuilder::new();
        b.group_order(WIN7_GROUP_ORDER);
        for (name, group) in [
            ("Wdf01000", "WdfLoadGroup"),
            ("ACPI", "Boot Bus Extender"),
            ("msisadrv", "Boot Bus Extender"),
            ("pci", "Boot Bus Extender"),
            ("vdrvroot", "Boot Bus Extender"),
            ("Compbatt", "System Bus Extender"),
            ("intelide", "System Bus Extender"),
            ("mountmgr", "System Bus Extender"),
            ("partmgr", "System Bus Extender"),
            ("vmbus", "System Bus Extender"),
            ("volmgr", "System Bus Extender"),
            ("volmgrx", "System Bus Extender"),
            ("vmci", "System Bus Extender"),
            ("vsock", "System Bus Extender"),
            ("amdxata", "SCSI miniport"),
            ("atapi", "SCSI miniport"),
            ("LSI_SAS", "SCSI miniport"),
            ("msahci", "SCSI miniport"),
        ] {
            b.driver(name, 0, Some(group), None);
        }
        b.driver("FltMgr", 0, Some("FSFilter Infrastructure"), None);
        b.service_key("FltMgr")
            .set_value("Type", crate::registry::RegValue::Dword(2));
        b.driver("vsepflt", 0, Some("FSFilter Anti-Virus"), None)
            .minifilter_instance("vsepflt", "VFileFilter Instance", "328200");
        b.service_key("vsepflt")
            .set_value("Type", crate::registry::RegValue::Dword(2));
        b.device(VMCI_DEVICE, "vmci", SYSTEM_CLASS_GUID);
        b.device(r"ROOT\ACPI_HAL\0000", "ACPI", SYSTEM_CLASS_GUID);
        if product_filter {
            // The product's minifilter, and its separate device filter driver
            // that registers as a System-class upper filter.
            b.driver("dlpflt", 0, Some("FSFilter Activity Monitor"), None)
                .minifilter_instance("dlpflt", "dlpflt Instance", "385100");
            b.service_key("dlpflt")
                .set_value("Type", crate::registry::RegValue::Dword(2));
            b.driver("dlpdev", 0, Some("Base"), None);
            b.class(SYSTEM_CLASS_GUID, "System", &["dlpdev"], &[]);
        } else {
            b.class(SYSTEM_CLASS_GUID, "System", &[], &[]);
        }
        b.build()
    }
}
