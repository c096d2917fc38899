//! The boot-start and system-start initialisation order, with the PnP device
//! starts placed where the I/O manager would start them.
//!
//! Rules (sources and version notes in `docs/boot-order.md`):
//!
//! 1. Only drivers (Type 1, 2, 8, or no Type) with an effective Start of 0
//!    (boot) or 1 (system) are initialised by the kernel. Every boot-start
//!    driver is initialised before any system-start driver.
//! 2. Within a start type the `ServiceGroupOrder\List` is scanned once, group
//!    by group. A driver with no group, or a group not in the list, goes in one
//!    last bucket after every listed group.
//! 3. Within a listed group drivers are ordered by their tag's *position* in
//!    the group's `GroupOrderList` vector (1-based). A tag not in the vector
//!    (or a group with no vector) ranks next to last (`0xFFFFFFFE`); a driver
//!    without a `Tag` ranks last (`0xFFFFFFFF`). This is ReactOS
//!    `CmpFindTagIndex`/`CmpAddDriverToList`, i.e. NT 5.2 and later; see the
//!    docs for the versions that differ. Ties keep the registry's enumeration
//!    order (case-insensitive name order); the last bucket is in *reverse*
//!    registry order (the driver list is built by inserting at its head, and
//!    the group sort never moves unlisted drivers), tag-sorted within each
//!    run of consecutive drivers of one group.
//! 4. `DependOnService`/`DependOnGroup` do not influence the order of boot-
//!    and system-start drivers.
//! 5. Windows 8 and later (detected by a boot-start driver in one of the
//!    loader's hard-coded groups, [`EARLY_GROUPS`] or "Core"): the boot
//!    loader puts its hard-coded core driver images ([`EARLY_IMAGE_LISTS`])
//!    first, then the hard-coded groups, before the `ServiceGroupOrder` scan;
//!    the kernel initialises them first (`PipInitializeCoreDriversAndElam`).
//!    Lists and order as the `nt-load-order` crate models Windows 10/11
//!    winload.
//! 6. A PnP device's stack is LowerFilters (device, then class), the function
//!    driver, UpperFilters (device, then class). The device starts right after
//!    the latest-initialised driver of that whole stack. A demand- or
//!    auto-start member can only be loaded once the system phase begins (the
//!    boot loader loaded only boot drivers); a disabled or missing member means
//!    the device never starts.

use serde::Serialize;

use crate::model::{DeviceInstance, Model, Service, StartType, fold};

/// Which kernel initialisation pass a driver belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// `IopInitializeBootDrivers` (Start = 0).
    Boot,
    /// `IopInitializeSystemDrivers` (Start = 1).
    System,
}

/// Where a driver's tag puts it within its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TagRank {
    /// The tag is at this 1-based position of the group's `GroupOrderList` vector.
    Position(u32),
    /// The driver has a tag, but the vector lacks it (or the group has no
    /// vector): next to last.
    NotInVector,
    /// The driver has no `Tag`: last.
    NoTag,
}

impl TagRank {
    /// The sort key Windows uses (position, `0xFFFFFFFE`, `0xFFFFFFFF`).
    #[must_use]
    pub const fn key(self) -> u32 {
        match self {
            TagRank::Position(p) => p,
            TagRank::NotInVector => 0xFFFF_FFFE,
            TagRank::NoTag => 0xFFFF_FFFF,
        }
    }
}

/// Boot driver images the Windows 8+ boot loader puts first, in this order
/// (list name, images relative to the system root); from `nt-load-order`'s
/// model of Windows 10/11 winload.
pub const EARLY_IMAGE_LISTS: &[(&str, &[&str])] = &[
    (
        "Core Driver Services",
        &[
            r"system32\drivers\verifierext.sys",
            r"system32\drivers\wdf01000.sys",
            r"system32\drivers\acpiex.sys",
            r"system32\drivers\cng.sys",
            r"system32\drivers\mssecflt.sys",
            r"system32\drivers\sgrmagent.sys",
            r"system32\drivers\lxss.sys",
            r"system32\drivers\palcore.sys",
        ],
    ),
    (
        "TPM Core Driver Services",
        &[
            r"system32\drivers\acpisim.sys",
            r"system32\drivers\acpi.sys",
        ],
    ),
];

/// Groups the Windows 8+ boot loader puts first, in this order, whatever
/// `ServiceGroupOrder` says (they are not in it).
pub const EARLY_GROUPS: &[&str] = &[
    "Early-Launch",
    "Core Platform Extensions",
    "Core Security Extensions",
];

/// Groups the Windows 8+ loader and kernel handle themselves: not in
/// `ServiceGroupOrder`, yet not "unknown".
pub const HARDCODED_GROUPS: &[&str] = &[
    "Early-Launch",
    "Core Platform Extensions",
    "Core Security Extensions",
    "Core",
];

/// An image path relative to the system root, folded, with `\SystemRoot\`,
/// `%SystemRoot%\`, `\??\C:\Windows\` and similar prefixes removed:
/// `system32\drivers\vmci.sys`.
#[must_use]
pub fn normalize_image(image: &str) -> String {
    let mut p = fold(image).replace('/', "\\");
    for prefix in [
        r"\systemroot\",
        r"%systemroot%\",
        r"%windir%\",
        r"\??\c:\windows\",
        r"c:\windows\",
        r"\windows\",
    ] {
        if let Some(rest) = p.strip_prefix(prefix) {
            p = rest.to_string();
            break;
        }
    }
    p.trim_start_matches('\\').to_string()
}

/// `true` if the machine uses the Windows 8+ hard-coded early lists (rule 5).
#[must_use]
pub fn uses_early_lists(model: &Model) -> bool {
    model.services.values().any(|s| {
        s.start == Some(StartType::Boot)
            && s.group
                .as_deref()
                .is_some_and(|g| HARDCODED_GROUPS.iter().any(|h| fold(h) == fold(g)))
    })
}

/// The hard-coded list or group that puts `service` first (rule 5), if any.
#[must_use]
pub fn early_reason(service: &Service) -> Option<&'static str> {
    let image = normalize_image(&service.image_path);
    for (list, images) in EARLY_IMAGE_LISTS {
        if images.iter().any(|i| *i == image) {
            return Some(list);
        }
    }
    let g = fold(service.group.as_deref()?);
    EARLY_GROUPS.iter().copied().find(|e| fold(e) == g)
}

/// A stack member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StackRole {
    /// Device-level `LowerFilters`.
    DeviceLowerFilter,
    /// Class `LowerFilters`.
    ClassLowerFilter,
    /// The function driver (`Service`).
    FunctionDriver,
    /// Device-level `UpperFilters`.
    DeviceUpperFilter,
    /// Class `UpperFilters`.
    ClassUpperFilter,
}

impl StackRole {
    /// Human words for messages ("class upper filter", ...).
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            StackRole::DeviceLowerFilter => "device lower filter",
            StackRole::ClassLowerFilter => "class lower filter",
            StackRole::FunctionDriver => "function driver",
            StackRole::DeviceUpperFilter => "device upper filter",
            StackRole::ClassUpperFilter => "class upper filter",
        }
    }

    /// `true` for the two class-wide roles.
    #[must_use]
    pub const fn is_class_wide(self) -> bool {
        matches!(
            self,
            StackRole::ClassLowerFilter | StackRole::ClassUpperFilter
        )
    }
}

/// Why a stack member holds the device start back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum DeferralReason {
    /// It is initialised later, at this 1-based order position.
    InitialisesLater {
        /// Its position in [`LoadOrder::entries`].
        position: usize,
    },
    /// It is demand- or auto-start: it can only be loaded in the system phase.
    LoadedOnDemand {
        /// Its start type.
        start: StartType,
    },
    /// It is disabled (Start = 4) or has no usable Start: the device never starts.
    Disabled,
    /// No such service: the device never starts.
    Missing,
    /// It exists but is not a driver (a Win32 service): the device never starts.
    NotADriver,
}

/// One stack member that holds a device start back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deferral {
    /// The device instance path (relative to `Enum`).
    pub device: String,
    /// The device's function driver.
    pub function_driver: String,
    /// The member holding the start back.
    pub filter: String,
    /// Its role in the stack.
    pub role: StackRole,
    /// The device's class GUID.
    pub class_guid: Option<String>,
    /// The class's name (e.g. `System`).
    pub class_name: Option<String>,
    /// The member's group, if it has one.
    pub filter_group: Option<String>,
    /// Why.
    pub reason: DeferralReason,
}

impl Deferral {
    /// One line for a table cell: `prodflt (class upper filter {4d36…} System, init #23)`.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut s = format!("{} ({}", self.filter, self.role.describe());
        if self.role.is_class_wide() {
            if let Some(g) = &self.class_guid {
                s.push(' ');
                s.push_str(g);
            }
            if let Some(n) = &self.class_name {
                s.push(' ');
                s.push_str(n);
            }
        }
        match &self.reason {
            DeferralReason::InitialisesLater { position } => {
                s.push_str(&format!(", initialised at #{position}"));
            }
            DeferralReason::LoadedOnDemand { start } => {
                s.push_str(&format!(
                    ", {}-start: loaded only in the system phase",
                    start.name()
                ));
            }
            DeferralReason::Disabled => s.push_str(", disabled: device never starts"),
            DeferralReason::Missing => s.push_str(", not installed: device never starts"),
            DeferralReason::NotADriver => s.push_str(", not a driver: device never starts"),
        }
        s.push(')');
        s
    }
}

/// One driver in the initialisation order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderEntry {
    /// 1-based position across both phases.
    pub position: usize,
    /// Service name as written.
    pub service: String,
    /// Boot or system phase.
    pub phase: Phase,
    /// Effective start type.
    pub start: StartType,
    /// `Group` as written.
    pub group: Option<String>,
    /// Index of the group in `ServiceGroupOrder\List`; `None`: the last bucket
    /// (no group, or a group the list does not have).
    pub group_index: Option<usize>,
    /// `Tag`.
    pub tag: Option<u32>,
    /// The tag's rank within the group.
    pub tag_rank: TagRank,
    /// Image path as written (or the default).
    pub image: String,
    /// The Windows 8+ hard-coded list or group that put it first (rule 5).
    pub early: Option<String>,
    /// Stack members that hold back the start of this driver's devices.
    pub deferred_by: Vec<Deferral>,
}

/// A PnP device start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceStart {
    /// Instance path.
    pub device: String,
    /// Function driver.
    pub function_driver: String,
    /// Every stack member, bottom to top, with its role.
    pub stack: Vec<(String, StackRole)>,
    /// The stack member initialised last (the one the start waited for).
    pub after: String,
    /// Members that initialise after the function driver.
    pub deferred_by: Vec<Deferral>,
}

/// One step of the computed boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "step")]
pub enum Step {
    /// `DriverEntry` of the driver at this 1-based position of [`LoadOrder::entries`].
    InitDriver {
        /// Position in [`LoadOrder::entries`].
        position: usize,
        /// The service.
        service: String,
    },
    /// Every boot-start driver has been initialised: the I/O manager calls the
    /// `IoRegisterBootDriverReinitialization` callbacks here.
    BootDriversDone,
    /// The system phase begins: the PnP manager can now load demand/auto-start
    /// drivers for devices.
    SystemPhaseBegins,
    /// A device stack starts (AddDevice + IRP_MN_START_DEVICE).
    StartDevice(DeviceStart),
    /// Every system-start driver has been initialised.
    SystemDriversDone,
}

/// The computed order. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadOrder {
    /// Drivers in initialisation order.
    pub entries: Vec<OrderEntry>,
    /// Everything in order: driver inits, phase markers, device starts.
    pub steps: Vec<Step>,
    /// Devices whose function driver is boot/system-start but which never
    /// start (a disabled, missing or non-driver stack member).
    pub never_started: Vec<DeviceStart>,
    /// Whether the Windows 8+ hard-coded early lists applied (rule 5).
    pub early_lists: bool,
}

impl LoadOrder {
    /// The entry of `service` (case-insensitive).
    #[must_use]
    pub fn entry(&self, service: &str) -> Option<&OrderEntry> {
        let s = fold(service);
        self.entries.iter().find(|e| fold(&e.service) == s)
    }

    /// 1-based position of `service` in the order.
    #[must_use]
    pub fn position(&self, service: &str) -> Option<usize> {
        self.entry(service).map(|e| e.position)
    }

    /// Index in [`LoadOrder::steps`] of `service`'s `InitDriver` step.
    #[must_use]
    pub fn init_step(&self, service: &str) -> Option<usize> {
        let s = fold(service);
        self.steps
            .iter()
            .position(|st| matches!(st, Step::InitDriver { service: x, .. } if fold(x) == s))
    }

    /// Index in [`LoadOrder::steps`] of the first start of a device whose
    /// function driver is `service`.
    #[must_use]
    pub fn device_start_step(&self, service: &str) -> Option<usize> {
        let s = fold(service);
        self.steps
            .iter()
            .position(|st| matches!(st, Step::StartDevice(d) if fold(&d.function_driver) == s))
    }

    /// Index of the given marker step.
    #[must_use]
    pub fn marker_step(&self, marker: &Step) -> Option<usize> {
        self.steps.iter().position(|s| s == marker)
    }
}

/// The rank of `service`'s tag within its group (rule 3).
#[must_use]
pub fn tag_rank(model: &Model, service: &Service) -> TagRank {
    let Some(tag) = service.tag else {
        return TagRank::NoTag;
    };
    let Some(vector) = service.group.as_deref().and_then(|g| model.tag_vector(g)) else {
        return TagRank::NotInVector;
    };
    match vector.iter().position(|t| *t == tag) {
        Some(i) => TagRank::Position(i as u32 + 1),
        None => TagRank::NotInVector,
    }
}

/// The services initialised in `phase`, in order (rules 1-5).
fn phase_order(model: &Model, phase: Phase, early_lists: bool) -> Vec<&Service> {
    let want = match phase {
        Phase::Boot => StartType::Boot,
        Phase::System => StartType::System,
    };
    // (bucket, rank, service): bucket 0..E for the early lists/groups, then
    // E + group index, then usize::MAX for the last bucket.
    let early_buckets: Vec<&str> = EARLY_IMAGE_LISTS
        .iter()
        .map(|(n, _)| *n)
        .chain(EARLY_GROUPS.iter().copied())
        .collect();
    let mut list: Vec<(usize, u32, &Service)> = model
        .services
        .values()
        .filter(|s| s.is_driver() && s.start == Some(want))
        .map(|s| {
            if early_lists && phase == Phase::Boot {
                let image = normalize_image(&s.image_path);
                for (b, (_, images)) in EARLY_IMAGE_LISTS.iter().enumerate() {
                    if let Some(i) = images.iter().position(|x| *x == image) {
                        return (b, i as u32, s);
                    }
                }
                if let Some(r) = early_reason(s)
                    && let Some(b) = early_buckets.iter().position(|x| *x == r)
                {
                    return (b, tag_rank(model, s).key(), s);
                }
            }
            let gi = s.group.as_deref().and_then(|g| model.group_index(g));
            match gi {
                Some(i) => (early_buckets.len() + i, tag_rank(model, s).key(), s),
                // Last bucket: ordered below (reverse registry order).
                None => (usize::MAX, 0, s),
            }
        })
        .collect();
    // `services` is a BTreeMap by folded name, so a stable sort keeps the
    // registry's enumeration order for ties.
    list.sort_by_key(|(g, t, _)| (*g, *t));
    // The last bucket (no group, or a group the list lacks): the driver list
    // is built by inserting each service at its head (ReactOS and NT
    // `CmpAddDriverToList`: `InsertHeadList`), so it starts in reverse
    // registry order; the group sort (`CmpDoSort`) moves only listed groups,
    // and the tag sort (`CmpResolveDriverDependencies` -> `CmpOrderGroup`)
    // orders each run of consecutive drivers of one group by tag.
    let split = list
        .iter()
        .position(|(g, _, _)| *g == usize::MAX)
        .unwrap_or(list.len());
    let mut last: Vec<&Service> = list
        .split_off(split)
        .into_iter()
        .map(|(_, _, s)| s)
        .collect();
    last.reverse();
    let mut i = 0;
    while i < last.len() {
        let group = last[i].group.as_deref().map(fold);
        let mut j = i + 1;
        while j < last.len() && last[j].group.as_deref().map(fold) == group {
            j += 1;
        }
        last[i..j].sort_by_key(|s| tag_rank(model, s).key());
        i = j;
    }
    list.into_iter().map(|(_, _, s)| s).chain(last).collect()
}

/// The device's stack, bottom to top (rule 6).
#[must_use]
pub fn device_stack(model: &Model, device: &DeviceInstance) -> Vec<(String, StackRole)> {
    let class = device.class_guid.as_deref().and_then(|g| model.class(g));
    let mut stack = Vec::new();
    for f in &device.lower_filters {
        stack.push((f.clone(), StackRole::DeviceLowerFilter));
    }
    if let Some(c) = class {
        for f in &c.lower {
            stack.push((f.clone(), StackRole::ClassLowerFilter));
        }
    }
    if let Some(s) = &device.service {
        stack.push((s.clone(), StackRole::FunctionDriver));
    }
    for f in &device.upper_filters {
        stack.push((f.clone(), StackRole::DeviceUpperFilter));
    }
    if let Some(c) = class {
        for f in &c.upper {
            stack.push((f.clone(), StackRole::ClassUpperFilter));
        }
    }
    stack
}

/// When a stack member is available, as an index into the base steps.
enum Ready {
    At(usize),
    Never(DeferralReason),
}

/// Computes the order (see the [module docs](self)).
#[must_use]
pub fn compute_order(model: &Model) -> LoadOrder {
    let mut entries = Vec::new();
    let mut base: Vec<Step> = Vec::new();
    let early_lists = uses_early_lists(model);
    for phase in [Phase::Boot, Phase::System] {
        if phase == Phase::System {
            base.push(Step::BootDriversDone);
            base.push(Step::SystemPhaseBegins);
        }
        for s in phase_order(model, phase, early_lists) {
            let position = entries.len() + 1;
            let gi = s.group.as_deref().and_then(|g| model.group_index(g));
            entries.push(OrderEntry {
                position,
                service: s.name.clone(),
                phase,
                start: s.start.unwrap_or(StartType::Other(u32::MAX)),
                group: s.group.clone(),
                group_index: gi,
                tag: s.tag,
                tag_rank: tag_rank(model, s),
                image: s.image_path.clone(),
                early: (early_lists && phase == Phase::Boot)
                    .then(|| early_reason(s))
                    .flatten()
                    .map(str::to_string),
                deferred_by: Vec::new(),
            });
            base.push(Step::InitDriver {
                position,
                service: s.name.clone(),
            });
        }
    }
    base.push(Step::SystemDriversDone);
    let system_begins = base
        .iter()
        .position(|s| *s == Step::SystemPhaseBegins)
        .unwrap_or(0);
    let init_index = |name: &str| {
        let n = fold(name);
        base.iter()
            .position(|st| matches!(st, Step::InitDriver { service, .. } if fold(service) == n))
    };

    // Plan every device whose function driver the kernel initialises.
    let mut starts_after: Vec<Vec<DeviceStart>> = vec![Vec::new(); base.len()];
    let mut never_started = Vec::new();
    for device in &model.devices {
        let Some(fd) = device.service.as_deref() else {
            continue;
        };
        let Some(fd_service) = model.service(fd) else {
            continue;
        };
        if !fd_service.is_driver()
            || !fd_service
                .start
                .is_some_and(StartType::is_kernel_initialised)
        {
            continue;
        }
        let Some(fd_step) = init_index(fd) else {
            continue;
        };
        let stack = device_stack(model, device);
        let class = device.class_guid.as_deref().and_then(|g| model.class(g));
        let mut latest = (fd_step, fd_service.name.clone());
        let mut deferred_by = Vec::new();
        let mut never = false;
        for (member, role) in &stack {
            if *role == StackRole::FunctionDriver {
                continue;
            }
            let svc = model.service(member);
            let ready = match svc {
                None => Ready::Never(DeferralReason::Missing),
                Some(s) if !s.is_driver() => Ready::Never(DeferralReason::NotADriver),
                Some(s) => match s.start {
                    Some(StartType::Boot | StartType::System) => match init_index(member) {
                        Some(i) => Ready::At(i),
                        None => Ready::Never(DeferralReason::Disabled),
                    },
                    Some(st @ (StartType::Auto | StartType::Demand)) => {
                        if fd_step < system_begins {
                            Ready::At(system_begins)
                        } else {
                            // In the system phase a demand filter is loaded
                            // with the device itself.
                            let _ = st;
                            Ready::At(fd_step)
                        }
                    }
                    _ => Ready::Never(DeferralReason::Disabled),
                },
            };
            let filter_group = svc.and_then(|s| s.group.clone());
            let mk = |reason| Deferral {
                device: device.path.clone(),
                function_driver: fd_service.name.clone(),
                filter: svc.map_or_else(|| member.clone(), |s| s.name.clone()),
                role: *role,
                class_guid: device.class_guid.clone(),
                class_name: class.and_then(|c| c.class_name.clone()),
                filter_group: filter_group.clone(),
                reason,
            };
            match ready {
                Ready::Never(reason) => {
                    deferred_by.push(mk(reason));
                    never = true;
                }
                Ready::At(i) if i > fd_step => {
                    let reason = match svc.and_then(|s| s.start) {
                        Some(st @ (StartType::Auto | StartType::Demand)) => {
                            DeferralReason::LoadedOnDemand { start: st }
                        }
                        _ => DeferralReason::InitialisesLater {
                            position: match &base[i] {
                                Step::InitDriver { position, .. } => *position,
                                _ => 0,
                            },
                        },
                    };
                    deferred_by.push(mk(reason));
                    if i > latest.0 {
                        latest = (i, svc.map_or_else(|| member.clone(), |s| s.name.clone()));
                    }
                }
                Ready::At(_) => {}
            }
        }
        let start = DeviceStart {
            device: device.path.clone(),
            function_driver: fd_service.name.clone(),
            stack,
            after: latest.1,
            deferred_by: deferred_by.clone(),
        };
        if let Some(e) = entries
            .iter_mut()
            .find(|e| fold(&e.service) == fold(&fd_service.name))
        {
            for d in &deferred_by {
                if !e.deferred_by.contains(d) {
                    e.deferred_by.push(d.clone());
                }
            }
        }
        if never {
            never_started.push(start);
        } else {
            starts_after[latest.0].push(start);
        }
    }

    let mut steps = Vec::with_capacity(base.len() + model.devices.len());
    for (i, step) in base.into_iter().enumerate() {
        steps.push(step);
        let mut starts = std::mem::take(&mut starts_after[i]);
        starts.sort_by_key(|a| fold(&a.device));
        steps.extend(starts.into_iter().map(Step::StartDevice));
    }
    LoadOrder {
        entries,
        steps,
        never_started,
        early_lists,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ControlSetBuilder, SYSTEM_CLASS_GUID};

    fn names(o: &LoadOrder) -> Vec<&str> {
        o.entries.iter().map(|e| e.service.as_str()).collect()
    }

    #[test]
    fn groups_then_tags_then_last_bucket_boot_before_system() {
        let mut b = ControlSetBuilder::new();
        b.group_order(&["A", "B"])
            .tag_vector("B", &[7, 3, 5])
            .driver("sys1", 1, Some("A"), None)
            .driver("b_no_tag", 0, Some("B"), None)
            .driver("b_tag5", 0, Some("B"), Some(5))
            .driver("b_tag3", 0, Some("B"), Some(3))
            .driver("b_tag9", 0, Some("B"), Some(9))
            .driver("a1", 0, Some("A"), None)
            .driver("nogroup", 0, None, None)
            .driver("unknown", 0, Some("System Boot Extender"), Some(1))
            .driver("demand", 3, Some("A"), None);
        let m = Model::from_control_set(b.root()).unwrap();
        let o = compute_order(&m);
        assert_eq!(
            names(&o),
            [
                "a1", "b_tag3", "b_tag5", "b_tag9", "b_no_tag", "unknown", "nogroup", "sys1"
            ]
        );
        assert_eq!(o.entry("b_tag9").unwrap().tag_rank, TagRank::NotInVector);
        assert_eq!(o.entry("b_tag5").unwrap().tag_rank, TagRank::Position(3));
        // The last bucket is in reverse registry order (the driver list is
        // built by inserting at its head), here "unknown" before "nogroup".
        assert_eq!(o.entry("unknown").unwrap().group_index, None);
        assert_eq!(o.entry("sys1").unwrap().phase, Phase::System);
    }

    #[test]
    fn class_upper_filter_defers_device_start() {
        let mut b = ControlSetBuilder::new();
        b.group_order(&["System Bus Extender", "FSFilter Anti-Virus"])
            .driver("vmci", 0, Some("System Bus Extender"), None)
            .driver("prodflt", 0, None, None)
            .driver("vsepflt", 0, Some("FSFilter Anti-Virus"), None)
            .device(r"PCI\VEN_15AD&DEV_0740\1", "vmci", SYSTEM_CLASS_GUID)
            .class(SYSTEM_CLASS_GUID, "System", &["prodflt"], &[]);
        let m = Model::from_control_set(b.root()).unwrap();
        let o = compute_order(&m);
        let dev = o.device_start_step("vmci").unwrap();
        assert!(dev > o.init_step("prodflt").unwrap());
        assert!(dev > o.init_step("vsepflt").unwrap());
        let d = &o.entry("vmci").unwrap().deferred_by[0];
        assert_eq!(d.filter, "prodflt");
        assert_eq!(d.role, StackRole::ClassUpperFilter);
        assert!(d.describe().contains("System"), "{}", d.describe());

        // Without the filter the device starts right after vmci.
        b.class(SYSTEM_CLASS_GUID, "System", &[], &[]);
        b.root_mut()
            .key_mut(&format!("Control\\Class\\{SYSTEM_CLASS_GUID}"))
            .unwrap()
            .remove_value("UpperFilters");
        let o = compute_order(&Model::from_control_set(b.root()).unwrap());
        assert_eq!(
            o.device_start_step("vmci"),
            Some(o.init_step("vmci").unwrap() + 1)
        );
        assert!(o.entry("vmci").unwrap().deferred_by.is_empty());
    }

    #[test]
    fn disabled_or_demand_filters() {
        let mut b = ControlSetBuilder::new();
        b.driver("fd", 0, None, None)
            .driver("lazy", 3, None, None)
            .driver("sysdrv", 1, None, None)
            .device(r"ROOT\X\0000", "fd", "{c}")
            .device_filters(r"ROOT\X\0000", &["lazy"], &[])
            .device(r"ROOT\Y\0000", "fd", "{d}")
            .device_filters(r"ROOT\Y\0000", &[], &["gone"]);
        let o = compute_order(&Model::from_control_set(b.root()).unwrap());
        let begins = o.marker_step(&Step::SystemPhaseBegins).unwrap();
        let x = o
            .steps
            .iter()
            .position(|s| matches!(s, Step::StartDevice(d) if d.device == r"ROOT\X\0000"))
            .unwrap();
        assert_eq!(x, begins + 1);
        assert!(x < o.init_step("sysdrv").unwrap());
        assert_eq!(o.never_started.len(), 1);
        assert_eq!(
            o.never_started[0].deferred_by[0].reason,
            DeferralReason::Missing
        );
    }
}
