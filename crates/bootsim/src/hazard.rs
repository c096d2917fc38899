//! Hazards: configurations that make a boot driver fail or rely on luck,
//! each with an id, a severity, the chain of evidence (every service
//! involved), a message and a concrete fix that names only groups this
//! machine has.
//!
//! Start with [`Analysis::new`] (model + needs table -> order + hazards); the
//! list of ids is [`HazardId`]; `docs/boot-order.md` explains each.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{Model, ModelError, StartType, fold};
use crate::needs::{Created, NeedWhen, NeedsTable, canonical_object_name};
use crate::order::{
    Deferral, DeferralReason, DeviceStart, LoadOrder, StackRole, Step, compute_order,
};
use crate::registry::RegKey;

/// The built-in altitude table's text (`data/altitudes.toml`).
pub const BUILTIN_ALTITUDES_TOML: &str = include_str!("../data/altitudes.toml");

/// How bad a hazard is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A driver will fail or a device will not start.
    Error,
    /// Works by luck, or will break on a small change.
    Warning,
    /// Worth knowing; Windows copes.
    Info,
}

impl Severity {
    /// `error`, `warning`, `info`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// Every hazard the model detects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HazardId {
    /// A class-wide filter defers the start of a device another boot driver
    /// needs during its `DriverEntry` (the seed's incident).
    ClassFilterDefersNeededDevice,
    /// A device-level filter does the same.
    DeviceFilterDefersNeededDevice,
    /// A needed device's owner initialises after the driver that needs it.
    NeededProviderStartsLater,
    /// A needed device's owner is missing, disabled or not kernel-started.
    NeededProviderMissing,
    /// A device lists a filter that is not installed (the device cannot start).
    FilterMissing,
    /// A device lists a filter that is disabled or not a driver.
    FilterDisabled,
    /// A device's filter initialises after its function driver (the start is deferred).
    FilterStartsLater,
    /// A boot/system-start driver's group is not in `ServiceGroupOrder\List`.
    UnknownGroup,
    /// A tag that the group's `GroupOrderList` vector lacks.
    TagNotInGroupOrderList,
    /// Two drivers of one group share a tag.
    DuplicateTag,
    /// A minifilter instance altitude outside its group's range.
    AltitudeOutsideGroupRange,
    /// Two minifilters with an instance at the same altitude.
    AltitudeCollision,
    /// A boot-start driver's image outside `System32\drivers`.
    BootImageOutsideDrivers,
    /// A boot/system-start driver declares `DependOnService`/`DependOnGroup`,
    /// which Windows ignores for those start types.
    IgnoredDependency,
    /// A service depends on a service that is not installed.
    DependencyMissing,
    /// A service depends on a disabled service.
    DependencyDisabled,
}

impl HazardId {
    /// The stable kebab-case id printed by the CLI.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            HazardId::ClassFilterDefersNeededDevice => "class-filter-defers-needed-device",
            HazardId::DeviceFilterDefersNeededDevice => "device-filter-defers-needed-device",
            HazardId::NeededProviderStartsLater => "needed-provider-starts-later",
            HazardId::NeededProviderMissing => "needed-provider-missing",
            HazardId::FilterMissing => "filter-missing",
            HazardId::FilterDisabled => "filter-disabled",
            HazardId::FilterStartsLater => "filter-starts-later",
            HazardId::UnknownGroup => "unknown-group",
            HazardId::TagNotInGroupOrderList => "tag-not-in-group-order-list",
            HazardId::DuplicateTag => "duplicate-tag",
            HazardId::AltitudeOutsideGroupRange => "altitude-outside-group-range",
            HazardId::AltitudeCollision => "altitude-collision",
            HazardId::BootImageOutsideDrivers => "boot-image-outside-drivers",
            HazardId::IgnoredDependency => "ignored-dependency",
            HazardId::DependencyMissing => "dependency-missing",
            HazardId::DependencyDisabled => "dependency-disabled",
        }
    }
}

impl std::fmt::Display for HazardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One hazard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hazard {
    /// What kind.
    pub id: HazardId,
    /// How bad.
    pub severity: Severity,
    /// Every service in the chain of evidence, the affected one first.
    pub services: Vec<String>,
    /// What happens and why, with positions and groups.
    pub message: String,
    /// What to change.
    pub fix: String,
}

/// One row of the altitude table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AltitudeRange {
    /// Load order group.
    pub name: String,
    /// Lowest altitude (inclusive).
    pub low: u64,
    /// Highest altitude (inclusive, integer part).
    pub high: u64,
}

#[derive(Deserialize)]
struct AltitudeFile {
    group: Vec<AltitudeRange>,
}

/// The minifilter groups' altitude ranges (`data/altitudes.toml`, from
/// Microsoft Learn).
#[must_use]
pub fn altitude_ranges() -> Vec<AltitudeRange> {
    // The embedded file is checked by a unit test.
    toml::from_str::<AltitudeFile>(BUILTIN_ALTITUDES_TOML)
        .map(|f| f.group)
        .unwrap_or_else(|e| panic!("data/altitudes.toml: {e}"))
}

/// The range for `group`, if it is a minifilter group.
#[must_use]
pub fn altitude_range(group: &str) -> Option<AltitudeRange> {
    let g = fold(group);
    altitude_ranges().into_iter().find(|r| fold(&r.name) == g)
}

/// Model, order and hazards of one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Analysis {
    /// The model (with devices synthesised from the needs table's class hints).
    pub model: Model,
    /// The order.
    pub order: LoadOrder,
    /// The hazards, errors first.
    pub hazards: Vec<Hazard>,
}

impl Analysis {
    /// Analyses `model` with `needs`.
    #[must_use]
    pub fn new(mut model: Model, needs: &NeedsTable) -> Self {
        needs.add_hinted_devices(&mut model);
        let order = compute_order(&model);
        let hazards = find_hazards(&model, &order, needs);
        Analysis {
            model,
            order,
            hazards,
        }
    }

    /// Reads the control set `root` and analyses it.
    ///
    /// # Errors
    /// [`ModelError`] when `root` is not a control set.
    pub fn from_control_set(root: &RegKey, needs: &NeedsTable) -> Result<Self, ModelError> {
        Ok(Self::new(Model::from_control_set(root)?, needs))
    }

    /// The hazards with id `id`.
    pub fn hazards_with(&self, id: HazardId) -> impl Iterator<Item = &Hazard> {
        self.hazards.iter().filter(move |h| h.id == id)
    }
}

/// Finds every hazard (see [`HazardId`]), errors first.
#[must_use]
pub fn find_hazards(model: &Model, order: &LoadOrder, needs: &NeedsTable) -> Vec<Hazard> {
    let mut out = Vec::new();
    needed_devices(model, order, needs, &mut out);
    filters(model, order, needs, &mut out);
    groups_and_tags(model, order, &mut out);
    altitudes(model, order, &mut out);
    altitude_collisions(model, &mut out);
    boot_images(model, order, &mut out);
    dependencies(model, order, &mut out);
    out.sort_by_key(|h| (h.severity, h.id));
    out
}

// ---------------------------------------------------------------------------
// Needed devices.

/// When a device is ready, and why then.
#[derive(Debug, Clone)]
struct Readiness {
    /// Index into `order.steps`; `None`: never during kernel initialisation.
    step: Option<usize>,
    /// Services from the directly needed owner down to the cause.
    path: Vec<String>,
    /// Devices along the path (parallel to `path`).
    devices: Vec<String>,
    cause: Cause,
}

#[derive(Debug, Clone)]
enum Cause {
    /// The owner itself (its init or its device start with nothing deferred).
    Owner,
    /// The owner's device start waits for this member.
    Deferred(Deferral),
    /// The owner is missing.
    OwnerMissing,
    /// The owner is disabled or not started by the kernel.
    OwnerNotKernelStarted(Option<StartType>),
}

fn later(a: Option<usize>, b: Option<usize>) -> bool {
    match (a, b) {
        (None, None) => false,
        (None, Some(_)) => true,
        (Some(_), None) => false,
        (Some(x), Some(y)) => x > y,
    }
}

fn readiness(
    model: &Model,
    order: &LoadOrder,
    needs: &NeedsTable,
    device: &str,
    seen: &mut BTreeSet<String>,
) -> Option<Readiness> {
    let decl = needs.device(device)?;
    if !seen.insert(canonical_object_name(&decl.name)) {
        return None;
    }
    let owner_name = model
        .service(&decl.owner)
        .map_or_else(|| decl.owner.clone(), |s| s.name.clone());
    let mut r = Readiness {
        step: None,
        path: vec![owner_name.clone()],
        devices: vec![decl.name.clone()],
        cause: Cause::Owner,
    };
    let Some(owner) = model.service(&decl.owner) else {
        r.cause = Cause::OwnerMissing;
        return Some(r);
    };
    let Some(init) = order.init_step(&owner.name) else {
        r.cause = Cause::OwnerNotKernelStarted(owner.start);
        return Some(r);
    };
    match decl.created {
        Created::DriverInit => r.step = Some(init),
        Created::DeviceStart => {
            // The owner's devices (started or not); the one whose start
            // creates `decl` (its `instance`, else the first).
            let owned = |d: &DeviceStart| fold(&d.function_driver) == fold(&owner.name);
            let all: Vec<&str> = order
                .steps
                .iter()
                .filter_map(|st| match st {
                    Step::StartDevice(d) if owned(d) => Some(d.device.as_str()),
                    _ => None,
                })
                .chain(
                    order
                        .never_started
                        .iter()
                        .filter(|d| owned(d))
                        .map(|d| d.device.as_str()),
                )
                .collect();
            let creates = |d: &DeviceStart| {
                owned(d) && decl.created_at_start_of(&d.device, all.iter().copied())
            };
            let start_step = order
                .steps
                .iter()
                .position(|st| matches!(st, Step::StartDevice(d) if creates(d)));
            if let Some(i) = start_step {
                r.step = Some(i);
                if let Step::StartDevice(ds) = &order.steps[i]
                    && let Some(d) = latest_deferral(ds)
                {
                    r.cause = Cause::Deferred(d);
                }
            } else if let Some(ds) = order.never_started.iter().find(|d| creates(d)) {
                r.step = None;
                if let Some(d) = ds
                    .deferred_by
                    .iter()
                    .find(|d| {
                        matches!(
                            d.reason,
                            DeferralReason::Missing
                                | DeferralReason::Disabled
                                | DeferralReason::NotADriver
                        )
                    })
                    .cloned()
                {
                    r.cause = Cause::Deferred(d);
                }
            } else {
                // A device-start device without a device instance: assume the
                // driver creates it as soon as it is initialised.
                r.step = Some(init);
            }
        }
    }
    for need in needs.needs_of(&owner.name) {
        if need.when != NeedWhen::Use {
            continue;
        }
        if let Some(sub) = readiness(model, order, needs, &need.device, seen)
            && later(sub.step, r.step)
        {
            let mut path = vec![owner_name.clone()];
            path.extend(sub.path);
            let mut devices = vec![decl.name.clone()];
            devices.extend(sub.devices);
            r = Readiness {
                step: sub.step,
                path,
                devices,
                cause: sub.cause,
            };
        }
    }
    Some(r)
}

fn latest_deferral(ds: &DeviceStart) -> Option<Deferral> {
    ds.deferred_by
        .iter()
        .find(|d| fold(&d.filter) == fold(&ds.after))
        .cloned()
}

fn group_label(group: Option<&str>, model: &Model) -> String {
    match group {
        None => "no group: last bucket".to_string(),
        Some(g) => match model.group_index(g) {
            Some(i) => format!("group \"{g}\", #{} in ServiceGroupOrder", i + 1),
            None => format!("group \"{g}\", not in ServiceGroupOrder: last bucket"),
        },
    }
}

fn pos_label(order: &LoadOrder, model: &Model, service: &str) -> String {
    match order.entry(service) {
        Some(e) => format!(
            "init #{} {}, {}",
            e.position,
            e.start.name(),
            group_label(e.group.as_deref(), model)
        ),
        None => "not initialised at boot".to_string(),
    }
}

/// Groups of the machine's list that a driver could move to so it initialises
/// before `before_group_index` (exclusive), best first: the deferred function
/// driver's own group, then the bus-extender groups; only when none of those
/// qualifies, the group just before.
fn earlier_groups(
    model: &Model,
    before_group_index: Option<usize>,
    prefer: Option<&str>,
) -> Vec<String> {
    let limit = before_group_index.unwrap_or(model.group_order.len());
    let mut candidates: Vec<usize> = Vec::new();
    if let Some(i) = prefer.and_then(|g| model.group_index(g)) {
        candidates.push(i);
    }
    for g in ["System Bus Extender", "Boot Bus Extender"] {
        if let Some(i) = model.group_index(g) {
            candidates.push(i);
        }
    }
    candidates.retain(|i| *i < limit);
    if candidates.is_empty() && limit > 0 {
        candidates.push(limit - 1);
    }
    let mut out: Vec<String> = Vec::new();
    for i in candidates {
        if let Some(g) = model.group_spelling(i)
            && !out.iter().any(|x| fold(x) == fold(g))
        {
            out.push(g.to_string());
        }
    }
    out.truncate(3);
    out
}

fn needed_devices(model: &Model, order: &LoadOrder, needs: &NeedsTable, out: &mut Vec<Hazard>) {
    for need in &needs.needs {
        if need.when != NeedWhen::Init {
            continue;
        }
        let Some(t_step) = order.init_step(&need.service) else {
            continue;
        };
        let Some(entry) = order.entry(&need.service) else {
            continue;
        };
        let t = entry.service.clone();
        let mut seen = BTreeSet::new();
        let Some(r) = readiness(model, order, needs, &need.device, &mut seen) else {
            continue;
        };
        if !later(r.step, Some(t_step)) {
            continue;
        }
        let agent = needs.agent(&t);
        let tolerant = agent.is_some_and(|a| a.style == crate::needs::AgentStyle::DeferredRetry);
        let mut services = vec![t.clone()];
        services.extend(r.path.iter().cloned());
        let mut chain = format!(
            "{t} ({}) needs {} in its DriverEntry",
            pos_label(order, model, &t),
            need.device
        );
        for (i, (svc, dev)) in r.path.iter().zip(&r.devices).enumerate() {
            if i == 0 {
                chain.push_str(&format!(
                    ", created by {svc} ({})",
                    pos_label(order, model, svc)
                ));
            } else {
                let busy = needs
                    .needs_of(&r.path[i - 1])
                    .find(|n| n.when == NeedWhen::Use)
                    .map(|n| n.busy())
                    .unwrap_or(thinagent_guest::NtStatus::STATUS_DEVICE_BUSY);
                chain.push_str(&format!(
                    "; {} answers with {} until {dev} (created by {svc}, {}) exists",
                    r.path[i - 1],
                    status_text(busy),
                    pos_label(order, model, svc)
                ));
            }
        }
        let last_owner = r.path.last().cloned().unwrap_or_default();
        let (id, severity, message, fix) = match &r.cause {
            Cause::Deferred(d) => {
                services.push(d.filter.clone());
                let class = match (&d.class_guid, &d.class_name) {
                    (Some(g), Some(n)) => format!("{n} class {g}"),
                    (Some(g), None) => format!("class {g}"),
                    _ => "its class".to_string(),
                };
                let when = match &d.reason {
                    DeferralReason::InitialisesLater { .. } => format!(
                        "starts only after its {} {} initialises ({})",
                        d.role.describe(),
                        d.filter,
                        pos_label(order, model, &d.filter)
                    ),
                    DeferralReason::LoadedOnDemand { start } => format!(
                        "waits for its {} {}, {}-start, which is loaded only in the system phase",
                        d.role.describe(),
                        d.filter,
                        start.name()
                    ),
                    DeferralReason::Missing => format!(
                        "never starts: its {} {} is not installed",
                        d.role.describe(),
                        d.filter
                    ),
                    DeferralReason::Disabled | DeferralReason::NotADriver => format!(
                        "never starts: its {} {} is disabled or not a driver",
                        d.role.describe(),
                        d.filter
                    ),
                };
                let outcome = if tolerant {
                    format!(
                        "{t} retries in a worker thread, so it connects only once that device has started"
                    )
                } else {
                    // The device itself missing: name not found; a device
                    // whose owner waits for another: the owner's busy status.
                    let status = if r.path.len() < 2 {
                        thinagent_guest::NtStatus::STATUS_OBJECT_NAME_NOT_FOUND
                    } else {
                        needs
                            .needs_of(&r.path[r.path.len() - 2])
                            .find(|n| n.when == NeedWhen::Use)
                            .map(|n| n.busy())
                            .unwrap_or(thinagent_guest::NtStatus::STATUS_DEVICE_BUSY)
                    };
                    format!("{t}'s DriverEntry fails with {}", status_text(status))
                };
                let message = format!(
                    "{chain}; {last_owner}'s device {} ({class}) {when}. {outcome}.",
                    d.device
                );
                let where_ = if d.role.is_class_wide() {
                    format!(
                        "Control\\Class\\{}\\{}",
                        d.class_guid.as_deref().unwrap_or("{class}"),
                        if matches!(
                            d.role,
                            StackRole::ClassUpperFilter | StackRole::DeviceUpperFilter
                        ) {
                            "UpperFilters"
                        } else {
                            "LowerFilters"
                        }
                    )
                } else {
                    format!(
                        "Enum\\{}\\{}",
                        d.device,
                        if d.role == StackRole::DeviceUpperFilter {
                            "UpperFilters"
                        } else {
                            "LowerFilters"
                        }
                    )
                };
                let mut fix = format!(
                    "(1) remove {} from {where_} (keep the other entries)",
                    d.filter
                );
                if matches!(
                    d.reason,
                    DeferralReason::InitialisesLater { .. } | DeferralReason::LoadedOnDemand { .. }
                ) {
                    let fd_group = model.service(&last_owner).and_then(|s| s.group.clone());
                    let groups = earlier_groups(model, entry.group_index, fd_group.as_deref());
                    let filter_svc = model.service(&d.filter);
                    let start_note = match filter_svc.and_then(|s| s.start) {
                        Some(StartType::Boot) => String::new(),
                        _ if entry.start == StartType::Boot => {
                            " and set its Start to 0 (boot)".to_string()
                        }
                        _ => String::new(),
                    };
                    let caution = match (
                        filter_svc.is_some_and(is_minifilter),
                        model.group_index("FSFilter Infrastructure"),
                        groups.first().and_then(|g| model.group_index(g)),
                    ) {
                        (true, Some(fltmgr), Some(to)) if to < fltmgr => format!(
                            " ({} is a file-system minifilter and needs FltMgr, which initialises in \"FSFilter Infrastructure\": move the class filter into a separate small driver rather than the minifilter itself)",
                            d.filter
                        ),
                        _ => String::new(),
                    };
                    if groups.is_empty() {
                        fix.push_str(&format!(
                            "; or (2) give {} a group that loads before {t}'s: this machine's ServiceGroupOrder\\List has none before it",
                            d.filter
                        ));
                    } else {
                        fix.push_str(&format!(
                            "; or (2) move {} to an earlier group of this machine's ServiceGroupOrder\\List: Services\\{}\\Group = \"{}\"{start_note} (other groups that load before {t}: {}){caution} — \"System Boot Extender\" is not a real group and would load last",
                            d.filter,
                            d.filter,
                            groups[0],
                            if groups.len() > 1 { groups[1..].join(", ") } else { "none".into() }
                        ));
                    }
                }
                fix.push_str(&format!(
                    "; or (3) make {t} retry after boot instead of failing DriverEntry: the loop in a worker thread and IoRegisterBootDriverReinitialization (ThinAgent's default)"
                ));
                let id = if d.role.is_class_wide() {
                    HazardId::ClassFilterDefersNeededDevice
                } else {
                    HazardId::DeviceFilterDefersNeededDevice
                };
                let severity = if tolerant {
                    Severity::Warning
                } else {
                    Severity::Error
                };
                (id, severity, message, fix)
            }
            Cause::Owner => (
                HazardId::NeededProviderStartsLater,
                if tolerant {
                    Severity::Warning
                } else {
                    Severity::Error
                },
                format!("{chain}; {last_owner} initialises after {t}."),
                format!(
                    "move {t} to a group after {last_owner}'s ({}), or {last_owner} to one before {t}'s, using only groups of this machine's ServiceGroupOrder\\List; or make {t} retry after boot",
                    group_label(
                        model.service(&last_owner).and_then(|s| s.group.as_deref()),
                        model
                    )
                ),
            ),
            Cause::OwnerMissing => (
                HazardId::NeededProviderMissing,
                Severity::Error,
                format!("{chain}; {last_owner} is not installed."),
                format!("install {last_owner} (VMware Tools for vmci/vsock), or remove {t}"),
            ),
            Cause::OwnerNotKernelStarted(start) => (
                HazardId::NeededProviderMissing,
                Severity::Error,
                format!(
                    "{chain}; {last_owner} is {}-start, so the kernel does not initialise it at boot.",
                    start.map_or("no".into(), |s| s.name())
                ),
                format!(
                    "set Services\\{last_owner}\\Start to 0 (boot) as its installer does, or remove {t}"
                ),
            ),
        };
        out.push(Hazard {
            id,
            severity,
            services: dedup(services),
            message,
            fix,
        });
    }
}

/// `STATUS_DEVICE_BUSY (0x80000011)`, or the hex alone for unnamed statuses.
fn status_text(s: thinagent_guest::NtStatus) -> String {
    match s.name() {
        Some(n) => format!("{n} ({s})"),
        None => s.to_string(),
    }
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in v {
        if !out.iter().any(|x| fold(x) == fold(&s)) {
            out.push(s);
        }
    }
    out
}

/// A file-system minifilter: Type 2, or minifilter instances, or a
/// dependency on FltMgr.
fn is_minifilter(s: &crate::model::Service) -> bool {
    s.kind == Some(2)
        || !s.instances.is_empty()
        || s.depend_on_service.iter().any(|d| fold(d) == "fltmgr")
}

// ---------------------------------------------------------------------------
// Filters.

/// (hazard, filter, role, class or device), folded.
type FilterKey = (HazardId, String, String, String);

fn filters(model: &Model, order: &LoadOrder, needs: &NeedsTable, out: &mut Vec<Hazard>) {
    // (id, filter, role, class-or-device) -> function drivers and devices
    let mut grouped: BTreeMap<FilterKey, (Deferral, Vec<String>)> = BTreeMap::new();
    let starts = order
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::StartDevice(d) => Some(d),
            _ => None,
        })
        .chain(order.never_started.iter());
    for ds in starts {
        for d in &ds.deferred_by {
            let id = match d.reason {
                DeferralReason::Missing => HazardId::FilterMissing,
                DeferralReason::Disabled | DeferralReason::NotADriver => HazardId::FilterDisabled,
                _ => HazardId::FilterStartsLater,
            };
            let scope = if d.role.is_class_wide() {
                d.class_guid.clone().unwrap_or_default()
            } else {
                d.device.clone()
            };
            let e = grouped
                .entry((
                    id,
                    fold(&d.filter),
                    d.role.describe().to_string(),
                    fold(&scope),
                ))
                .or_insert_with(|| (d.clone(), Vec::new()));
            if !e.1.iter().any(|x| fold(x) == fold(&ds.function_driver)) {
                e.1.push(ds.function_driver.clone());
            }
        }
    }
    for ((id, _, _, _), (d, fds)) in grouped {
        let scope = if d.role.is_class_wide() {
            format!(
                "class {}{}",
                d.class_guid.as_deref().unwrap_or("?"),
                d.class_name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            )
        } else {
            format!("device {}", d.device)
        };
        let mut services = fds.clone();
        services.push(d.filter.clone());
        let fds_s = fds.join(", ");
        let (severity, message, fix) = match id {
            HazardId::FilterMissing => (
                Severity::Error,
                format!(
                    "{} {} of {scope} is not installed: the device stack of {fds_s} cannot start",
                    d.role.describe(),
                    d.filter
                ),
                format!(
                    "remove {} from the {scope} filter list, or reinstall the product that owns it",
                    d.filter
                ),
            ),
            HazardId::FilterDisabled => (
                Severity::Error,
                format!(
                    "{} {} of {scope} is disabled or not a driver: the device stack of {fds_s} cannot start",
                    d.role.describe(),
                    d.filter
                ),
                format!(
                    "remove {} from the {scope} filter list, or set Services\\{}\\Start back to its installed value",
                    d.filter, d.filter
                ),
            ),
            _ => {
                let deferred = format!(
                    "{} {} of {scope} ({}) initialises after the function driver {fds_s}: that device start is deferred until {} is initialised",
                    d.role.describe(),
                    d.filter,
                    pos_label(order, model, &d.filter),
                    d.filter
                );
                // Already explained as the cause of a failing DriverEntry
                // (the seed's hazard): no second, weaker report.
                let explained = out.iter().any(|h| {
                    matches!(
                        h.id,
                        HazardId::ClassFilterDefersNeededDevice
                            | HazardId::DeviceFilterDefersNeededDevice
                    ) && h.services.iter().any(|x| fold(x) == fold(&d.filter))
                });
                let users = if explained {
                    Vec::new()
                } else {
                    deferred_device_users(order, needs, &fds)
                };
                if users.is_empty() {
                    (
                        Severity::Info,
                        deferred,
                        format!(
                            "fine unless a boot driver needs that device early (add it to the needs table to check); otherwise move {} to an earlier group of this machine's list",
                            d.filter
                        ),
                    )
                } else {
                    // A kernel-started driver serves clients through the
                    // deferred device: every boot-start client of it meets
                    // the busy answer until the filter loads, whether or not
                    // this machine has such a client yet.
                    // The chain: the serving drivers, the owners of the
                    // devices they need, the filter (not every other
                    // function driver the class filter also defers).
                    let mut said = Vec::new();
                    services.clear();
                    for (user, device, busy, owner) in &users {
                        said.push(format!(
                            "{user} ({}) needs {device}, created at {owner}'s device start, and answers its clients with {} until it exists",
                            pos_label(order, model, user),
                            status_text(*busy)
                        ));
                        services.push(user.clone());
                    }
                    for (_, _, _, owner) in &users {
                        services.push(owner.clone());
                    }
                    services.push(d.filter.clone());
                    let names: Vec<&str> = users.iter().map(|(u, ..)| u.as_str()).collect();
                    (
                        Severity::Warning,
                        format!(
                            "{deferred}; {}: a boot-start client of {} (a thin agent capturing the vSockets provider) fails or must wait until {} loads",
                            said.join("; "),
                            names.join(", "),
                            d.filter
                        ),
                        format!(
                            "(1) remove {} from the {scope} filter list; or (2) move {} to a group of this machine's ServiceGroupOrder\\List that loads before {fds_s}'s; clients of {} must retry after boot",
                            d.filter,
                            d.filter,
                            names.join(", ")
                        ),
                    )
                }
            }
        };
        out.push(Hazard {
            id,
            severity,
            services: dedup(services),
            message,
            fix,
        });
    }
}

/// (serving service, device it needs, status its clients get, device owner).
type DeviceUser = (String, String, thinagent_guest::NtStatus, String);

/// Kernel-started services that serve their clients through a device created
/// at the device start of one of `function_drivers` (a `use` need of the
/// needs table): (service, device, the status its clients get meanwhile,
/// the device's owner).
fn deferred_device_users(
    order: &LoadOrder,
    needs: &NeedsTable,
    function_drivers: &[String],
) -> Vec<DeviceUser> {
    let mut out: Vec<DeviceUser> = Vec::new();
    for need in needs.needs.iter().filter(|n| n.when == NeedWhen::Use) {
        let Some(decl) = needs.device(&need.device) else {
            continue;
        };
        if decl.created != crate::needs::Created::DeviceStart
            || !function_drivers
                .iter()
                .any(|f| fold(f) == fold(&decl.owner))
        {
            continue;
        }
        let Some(entry) = order.entry(&need.service) else {
            continue;
        };
        if !out.iter().any(|(s, ..)| fold(s) == fold(&entry.service)) {
            out.push((
                entry.service.clone(),
                need.device.clone(),
                need.busy(),
                decl.owner.clone(),
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Groups and tags.

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Up to three groups of the machine's list closest to `name`.
#[must_use]
pub fn closest_groups(model: &Model, name: &str) -> Vec<String> {
    let n = fold(name);
    let mut scored: Vec<(usize, usize, &String)> = model
        .group_order
        .iter()
        .enumerate()
        .map(|(i, g)| (levenshtein(&n, &fold(g)), i, g))
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(3)
        .map(|(_, _, g)| g.clone())
        .collect()
}

/// `a, b, c and N more` for long lists.
fn summarise(items: &[String]) -> String {
    if items.len() <= 3 {
        items.join(", ")
    } else {
        format!("{} and {} more", items[..3].join(", "), items.len() - 3)
    }
}

/// The devices (with their function driver) whose start `filter`, a stack
/// member initialised after the function driver, holds back.
fn devices_deferred_by(order: &LoadOrder, filter: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in &order.entries {
        for d in &e.deferred_by {
            if fold(&d.filter) == fold(filter)
                && matches!(d.reason, DeferralReason::InitialisesLater { .. })
            {
                let s = format!("{}'s device {}", d.function_driver, d.device);
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
    }
    out
}

fn groups_and_tags(model: &Model, order: &LoadOrder, out: &mut Vec<Hazard>) {
    let mut by_group_tag: BTreeMap<(crate::order::Phase, String, u32), Vec<String>> =
        BTreeMap::new();
    for e in &order.entries {
        let Some(group) = e.group.as_deref() else {
            continue;
        };
        let hardcoded = order.early_lists
            && crate::order::HARDCODED_GROUPS
                .iter()
                .any(|h| fold(h) == fold(group));
        if e.group_index.is_none() && !hardcoded {
            let close = closest_groups(model, group);
            let extra = if fold(group) == fold("System Boot Extender") {
                " (\"System Boot Extender\" is not a Windows group, whatever some advice says)"
            } else {
                ""
            };
            // Where it really loads is no fault in itself (Windows ships
            // drivers in the unlisted "PnP Filter" and "Network" groups):
            // it matters when the late load defers a device start that a
            // counted hazard (a driver needing that device) already names.
            let deferred = devices_deferred_by(order, &e.service);
            let harmful = out.iter().any(|h| {
                h.severity != Severity::Info
                    && matches!(
                        h.id,
                        HazardId::ClassFilterDefersNeededDevice
                            | HazardId::DeviceFilterDefersNeededDevice
                            | HazardId::FilterStartsLater
                    )
                    && h.services.iter().any(|x| fold(x) == fold(&e.service))
            });
            let (severity, tail) = if harmful {
                (
                    Severity::Warning,
                    format!(
                        ", so the start of {} waits for it, and a boot driver needs that device (see the hazard naming {})",
                        summarise(&deferred),
                        e.service
                    ),
                )
            } else if deferred.is_empty() {
                (
                    Severity::Info,
                    " (as Windows does for its own drivers in \"PnP Filter\" and \"Network\"); nothing waits for it".to_string(),
                )
            } else {
                (
                    Severity::Info,
                    format!(
                        " (as Windows does for its own drivers in \"PnP Filter\" and \"Network\"); the start of {} waits for it, which no boot driver needs early",
                        summarise(&deferred)
                    ),
                )
            };
            out.push(Hazard {
                id: HazardId::UnknownGroup,
                severity,
                services: vec![e.service.clone()],
                message: format!(
                    "{} ({} #{}) is in group \"{group}\", which this machine's ServiceGroupOrder\\List does not have{extra}: it initialises in the last bucket, after every listed group{tail}",
                    e.service,
                    e.start.name(),
                    e.position
                ),
                fix: if close.is_empty() {
                    "this machine has no ServiceGroupOrder\\List: check the export includes Control\\ServiceGroupOrder".to_string()
                } else {
                    format!(
                        "{}set Services\\{}\\Group to a group this machine lists, e.g. {}",
                        if severity == Severity::Info {
                            "nothing to change while nothing needs it earlier; to make it initialise earlier, "
                        } else {
                            ""
                        },
                        e.service,
                        close
                            .iter()
                            .map(|g| format!("\"{g}\""))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    )
                },
            });
            continue;
        }
        if hardcoded {
            continue;
        }
        if let Some(tag) = e.tag {
            by_group_tag
                .entry((e.phase, fold(group), tag))
                .or_default()
                .push(e.service.clone());
            if e.tag_rank == crate::order::TagRank::NotInVector {
                out.push(Hazard {
                    id: HazardId::TagNotInGroupOrderList,
                    severity: Severity::Info,
                    services: vec![e.service.clone()],
                    message: format!(
                        "{} has Tag {tag}, which GroupOrderList\\{group} does not list: it initialises next to last in \"{group}\", after every listed tag and before the untagged drivers",
                        e.service
                    ),
                    fix: format!(
                        "if {} must initialise at a fixed place in \"{group}\", add tag {tag} to Control\\GroupOrderList\\{group} at that position (or reinstall so the installer assigns a listed tag)",
                        e.service
                    ),
                });
            }
        }
    }
    for ((_, _, tag), services) in by_group_tag {
        if services.len() < 2 {
            continue;
        }
        let group = order
            .entry(&services[0])
            .and_then(|e| e.group.clone())
            .unwrap_or_default();
        out.push(Hazard {
            id: HazardId::DuplicateTag,
            severity: Severity::Info,
            services: services.clone(),
            message: format!(
                "{} share Tag {tag} in group \"{group}\": their relative order is only the registry's enumeration order",
                services.join(", ")
            ),
            fix: format!(
                "give each a distinct tag from Control\\GroupOrderList\\{group} in the order they must initialise"
            ),
        });
    }
}

// ---------------------------------------------------------------------------
// Altitudes.

/// Integer part of an altitude string (`"328200"`, `"325000.5"`).
fn altitude_integer(a: &str) -> Option<u64> {
    let int = a.split('.').next()?;
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(frac) = a.split_once('.').map(|x| x.1)
        && !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    int.parse().ok()
}

fn altitudes(model: &Model, _order: &LoadOrder, out: &mut Vec<Hazard>) {
    let ranges = altitude_ranges();
    for s in model.services.values() {
        let Some(group) = s.group.as_deref() else {
            continue;
        };
        let Some(range) = ranges.iter().find(|r| fold(&r.name) == fold(group)) else {
            continue;
        };
        for inst in &s.instances {
            let Some(alt) = inst.altitude.as_deref() else {
                continue;
            };
            let ok = altitude_integer(alt).is_some_and(|v| v >= range.low && v <= range.high);
            if !ok {
                out.push(Hazard {
                    id: HazardId::AltitudeOutsideGroupRange,
                    severity: Severity::Info,
                    services: vec![s.name.clone()],
                    message: format!(
                        "{} instance \"{}\" has Altitude {alt}, outside \"{}\"'s range {}-{}: Filter Manager attaches it where the altitude says, not where its group implies (the group only orders its driver's load; Microsoft allocates some of its own filters such altitudes)",
                        s.name, inst.name, range.name, range.low, range.high
                    ),
                    fix: format!(
                        "use the altitude Microsoft allocated to this driver within {}-{}, or move it to the group whose range holds {alt}",
                        range.low, range.high
                    ),
                });
            }
        }
    }
}

/// An altitude as a comparable key: integer part without leading zeros and
/// fraction without trailing zeros (`"0385600.50"` -> `("385600", "5")`).
fn altitude_key(a: &str) -> Option<(String, String)> {
    altitude_integer(a)?;
    let (int, frac) = a.split_once('.').unwrap_or((a, ""));
    let int = int.trim_start_matches('0');
    Some((
        if int.is_empty() { "0" } else { int }.to_string(),
        frac.trim_end_matches('0').to_string(),
    ))
}

/// Two different minifilters that can both load with an instance at the
/// same altitude: Filter Manager attaches the first and refuses the second
/// (`STATUS_FLT_INSTANCE_ALTITUDE_COLLISION`, 0xC01C0011), so the second
/// filter does not see that volume's I/O.
fn altitude_collisions(model: &Model, out: &mut Vec<Hazard>) {
    // (integer, fraction) -> (service, instance, altitude as written)
    type Holders = Vec<(String, String, String)>;
    let mut by_alt: BTreeMap<(String, String), Holders> = BTreeMap::new();
    for s in model.services.values() {
        if matches!(s.start, Some(StartType::Disabled) | None) {
            continue;
        }
        for inst in &s.instances {
            let Some(alt) = inst.altitude.as_deref() else {
                continue;
            };
            let Some(key) = altitude_key(alt) else {
                continue;
            };
            let list = by_alt.entry(key).or_default();
            if !list.iter().any(|(n, ..)| fold(n) == fold(&s.name)) {
                list.push((s.name.clone(), inst.name.clone(), alt.to_string()));
            }
        }
    }
    for list in by_alt.into_values() {
        if list.len() < 2 {
            continue;
        }
        let alt = list[0].2.clone();
        let who = list
            .iter()
            .map(|(n, i, _)| format!("{n} (instance \"{i}\")"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(Hazard {
            id: HazardId::AltitudeCollision,
            severity: Severity::Warning,
            services: list.iter().map(|(n, ..)| n.clone()).collect(),
            message: format!(
                "{who} share Altitude {alt}: Filter Manager attaches whichever loads first and refuses the other's instance with STATUS_FLT_INSTANCE_ALTITUDE_COLLISION (0xC01C0011), so that filter does not see the volume's I/O"
            ),
            fix: "give each filter the altitude Microsoft allocated to it (Microsoft Learn, Allocated filter altitudes); two products never share one".to_string(),
        });
    }
}

// ---------------------------------------------------------------------------
// Boot images.

/// `true` if `image` (as `ImagePath` writes it) is under `System32\drivers`.
#[must_use]
pub fn image_under_system32_drivers(image: &str) -> bool {
    crate::order::normalize_image(image).starts_with(r"system32\drivers\")
}

/// `true` if `image` (as `ImagePath` writes it) is relative to the system
/// root (`System32\x.sys`, `\SystemRoot\...`, `\??\C:\Windows\...`).
#[must_use]
pub fn image_under_system_root(image: &str) -> bool {
    let p = crate::order::normalize_image(image);
    !(p.contains(':') || p.starts_with("??") || p.split('\\').any(|c| c == ".."))
}

fn boot_images(model: &Model, order: &LoadOrder, out: &mut Vec<Hazard>) {
    for e in &order.entries {
        if e.start != StartType::Boot || image_under_system32_drivers(&e.image) {
            continue;
        }
        let name = model
            .service(&e.service)
            .map_or(e.service.as_str(), |s| s.name.as_str());
        // The boot loader opens boot driver images relative to the system
        // root on the boot volume (nt-load-order resolves them the same
        // way): anywhere under it loads (Windows ships CLFS as
        // System32\CLFS.sys); a path outside it does not.
        let (severity, why) = if image_under_system_root(&e.image) {
            (
                Severity::Info,
                "it is still under the system root, which the boot loader reads (Windows ships CLFS as System32\\CLFS.sys)",
            )
        } else {
            (
                Severity::Warning,
                "it is outside the system root: the boot loader reads boot driver images only from the system root on the boot volume, before any other volume or file system is available, so the driver does not load",
            )
        };
        out.push(Hazard {
            id: HazardId::BootImageOutsideDrivers,
            severity,
            services: vec![name.to_string()],
            message: format!(
                "boot-start {name}'s image \"{}\" is not under System32\\drivers; {why}",
                e.image
            ),
            fix: format!(
                "install the image as System32\\drivers\\{}.sys and set ImagePath to \\SystemRoot\\System32\\drivers\\{}.sys",
                name, name
            ),
        });
    }
}

// ---------------------------------------------------------------------------
// Dependencies.

fn dependencies(model: &Model, order: &LoadOrder, out: &mut Vec<Hazard>) {
    for s in model.services.values() {
        if s.depend_on_service.is_empty() && s.depend_on_group.is_empty() {
            continue;
        }
        let own = order.entry(&s.name);
        if let Some(own) = own {
            // Kernel-initialised: the declaration is ignored.
            let mut problems = Vec::new();
            // A DependOnGroup none of whose drivers loads is the one case
            // where the declaration can keep a boot/system driver from
            // loading (the kernel's dependency check).
            let mut empty_group = false;
            let mut services = vec![s.name.clone()];
            for dep in &s.depend_on_service {
                services.push(dep.clone());
                match (model.service(dep), order.entry(dep)) {
                    (None, _) => problems.push(format!("{dep} is not installed")),
                    (Some(_), Some(d)) if d.position > own.position => problems.push(format!(
                        "{dep} initialises later (#{} > #{})",
                        d.position, own.position
                    )),
                    (Some(_), Some(_)) => {}
                    (Some(d), None) => problems.push(format!(
                        "{dep} is {}-start, not initialised by the kernel before it",
                        d.start.map_or("no".into(), |s| s.name())
                    )),
                }
            }
            for g in &s.depend_on_group {
                let first_later = order.entries.iter().find(|e| {
                    e.group.as_deref().is_some_and(|x| fold(x) == fold(g))
                        && e.position > own.position
                });
                let any = order
                    .entries
                    .iter()
                    .any(|e| e.group.as_deref().is_some_and(|x| fold(x) == fold(g)));
                if let Some(l) = first_later {
                    problems.push(format!(
                        "group \"{g}\" has {} initialising later (#{})",
                        l.service, l.position
                    ));
                } else if !any {
                    empty_group = true;
                    problems.push(format!("no driver of group \"{g}\" is initialised at boot"));
                }
            }
            let declared = s
                .depend_on_service
                .iter()
                .map(|d| format!("service {d}"))
                .chain(s.depend_on_group.iter().map(|g| format!("group \"{g}\"")))
                .collect::<Vec<_>>()
                .join(", ");
            let (severity, tail) = if problems.is_empty() {
                (
                    Severity::Info,
                    "the order happens to satisfy it today".to_string(),
                )
            } else if empty_group {
                (
                    Severity::Warning,
                    format!(
                        "and it does not hold: {} (the kernel's dependency check can skip a driver whose DependOnGroup has no driver loaded)",
                        problems.join("; ")
                    ),
                )
            } else {
                // The order is what it is: whether the driver's DriverEntry
                // needs the other one initialised first is not in the
                // registry (Windows' own CSC declares rdbss, which loads
                // after it, and works).
                (
                    Severity::Info,
                    format!(
                        "and it does not hold: {} (harmless unless its DriverEntry needs the other initialised first)",
                        problems.join("; ")
                    ),
                )
            };
            out.push(Hazard {
                id: HazardId::IgnoredDependency,
                severity,
                services: dedup(services),
                message: format!(
                    "{} is {}-start and declares a dependency on {declared}; Windows ignores DependOnService/DependOnGroup for boot- and system-start drivers, so nothing guarantees it — {tail}",
                    s.name,
                    own.start.name()
                ),
                fix: format!(
                    "rely on group and tag order instead: put {} in a group after its dependencies' (or cope with their absence in DriverEntry)",
                    s.name
                ),
            });
            continue;
        }
        if !matches!(s.start, Some(StartType::Auto | StartType::Demand)) {
            continue;
        }
        // Not a boot or system-start driver: nothing at boot waits for it.
        // A demand-start service starts only when its device appears or
        // someone asks (Windows ships iagpio and UcmUcsiAcpiClient without
        // their class extensions on machines without that hardware).
        let when = if s.start == Some(StartType::Demand) {
            "if anything ever starts it (demand-start: never at boot)"
        } else {
            "at every boot (auto-start; not a boot or system-start driver, so no boot driver waits for it)"
        };
        for dep in &s.depend_on_service {
            match model.service(dep) {
                None => out.push(Hazard {
                    id: HazardId::DependencyMissing,
                    severity: Severity::Info,
                    services: vec![s.name.clone(), dep.clone()],
                    message: format!(
                        "{} depends on {dep}, which is not installed: the service control manager will refuse to start {} {when}",
                        s.name, s.name
                    ),
                    fix: format!("install {dep}, or remove it from Services\\{}\\DependOnService", s.name),
                }),
                Some(d) if d.start == Some(StartType::Disabled) => out.push(Hazard {
                    id: HazardId::DependencyDisabled,
                    severity: Severity::Info,
                    services: vec![s.name.clone(), d.name.clone()],
                    message: format!(
                        "{} depends on {}, which is disabled: the service control manager will refuse to start {} {when}",
                        s.name, d.name, s.name
                    ),
                    fix: format!("re-enable {} or remove the dependency", d.name),
                }),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ControlSetBuilder;

    #[test]
    fn altitude_table_parses() {
        let r = altitude_range("fsfilter anti-virus").unwrap();
        assert_eq!((r.low, r.high), (320_000, 329_999));
        assert_eq!(altitude_ranges().len(), 23);
    }

    #[test]
    fn altitude_parsing() {
        assert_eq!(altitude_integer("328200"), Some(328_200));
        assert_eq!(altitude_integer("325000.5"), Some(325_000));
        assert_eq!(altitude_integer("32x"), None);
        assert_eq!(altitude_integer(".5"), None);
    }

    #[test]
    fn image_paths() {
        assert!(image_under_system32_drivers(
            r"\SystemRoot\System32\drivers\vmci.sys"
        ));
        assert!(image_under_system32_drivers(r"system32\DRIVERS\vsock.sys"));
        assert!(image_under_system32_drivers(
            r"System32\drivers\wd\WdBoot.sys"
        ));
        assert!(!image_under_system32_drivers(
            r"\??\C:\Program Files\X\x.sys"
        ));
        assert!(!image_under_system32_drivers(r"System32\x.sys"));
    }

    #[test]
    fn unknown_group_suggests_listed_groups() {
        let mut b = ControlSetBuilder::new();
        b.group_order(&["Boot Bus Extender", "System Bus Extender", "Base"])
            .driver("p", 0, Some("System Boot Extender"), None);
        let a = Analysis::from_control_set(b.root(), &NeedsTable::empty()).unwrap();
        let h = a.hazards_with(HazardId::UnknownGroup).next().unwrap();
        assert!(h.fix.contains("\"System Bus Extender\""), "{}", h.fix);
        assert!(h.message.contains("last bucket"));
    }

    #[test]
    fn duplicate_and_unlisted_tags_and_altitude_and_image() {
        let mut b = ControlSetBuilder::new();
        b.group_order(&["FSFilter Anti-Virus"])
            .tag_vector("FSFilter Anti-Virus", &[1, 2])
            .driver("a", 0, Some("FSFilter Anti-Virus"), Some(2))
            .driver("b", 0, Some("FSFilter Anti-Virus"), Some(2))
            .driver("c", 0, Some("FSFilter Anti-Virus"), Some(9))
            .minifilter_instance("c", "c Instance", "360000");
        b.service_key("c").set_value(
            "ImagePath",
            crate::registry::RegValue::ExpandSz(r"\??\C:\Program Files\C\c.sys".into()),
        );
        let a = Analysis::from_control_set(b.root(), &NeedsTable::empty()).unwrap();
        let ids: Vec<_> = a.hazards.iter().map(|h| h.id).collect();
        for want in [
            HazardId::DuplicateTag,
            HazardId::TagNotInGroupOrderList,
            HazardId::AltitudeOutsideGroupRange,
            HazardId::BootImageOutsideDrivers,
        ] {
            assert!(ids.contains(&want), "{want} missing from {ids:?}");
        }
        let dup = a.hazards_with(HazardId::DuplicateTag).next().unwrap();
        assert_eq!(dup.services, ["a", "b"]);
    }

    #[test]
    fn dependencies_of_boot_drivers_are_ignored_hazards() {
        let mut b = ControlSetBuilder::new();
        b.group_order(&["FSFilter Infrastructure", "FSFilter Anti-Virus"])
            .driver("FltMgr", 0, Some("FSFilter Infrastructure"), None)
            .driver("ok", 0, Some("FSFilter Anti-Virus"), None)
            .driver("bad", 0, Some("FSFilter Infrastructure"), None)
            .driver("late", 0, Some("FSFilter Anti-Virus"), None)
            .driver("svc", 3, None, None);
        let set = |b: &mut ControlSetBuilder, s: &str, d: &str| {
            b.service_key(s).set_value(
                "DependOnService",
                crate::registry::RegValue::MultiSz(vec![d.into()]),
            );
        };
        set(&mut b, "ok", "FltMgr");
        set(&mut b, "bad", "late");
        set(&mut b, "svc", "nothere");
        b.driver("grp", 0, Some("FSFilter Anti-Virus"), None);
        b.service_key("grp").set_value(
            "DependOnGroup",
            crate::registry::RegValue::MultiSz(vec!["No Such Group".into()]),
        );
        let a = Analysis::from_control_set(b.root(), &NeedsTable::empty()).unwrap();
        let ign: Vec<_> = a.hazards_with(HazardId::IgnoredDependency).collect();
        assert_eq!(ign.len(), 3);
        // Initialised later: the order does not honour it, which is a note
        // (Windows' own CSC -> rdbss is such a case and works).
        let bad = ign.iter().find(|h| h.services[0] == "bad").unwrap();
        assert_eq!(bad.severity, Severity::Info);
        assert!(bad.message.contains("does not hold"), "{}", bad.message);
        let ok = ign.iter().find(|h| h.services[0] == "ok").unwrap();
        assert_eq!(ok.severity, Severity::Info);
        // A DependOnGroup no driver of which loads: the kernel may skip it.
        let grp = ign.iter().find(|h| h.services[0] == "grp").unwrap();
        assert_eq!(grp.severity, Severity::Warning);
        // A demand-start service never starts at boot: a note.
        let missing: Vec<_> = a.hazards_with(HazardId::DependencyMissing).collect();
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].severity, Severity::Info);
    }

    #[test]
    fn altitude_notes_and_collisions() {
        let mut b = ControlSetBuilder::new();
        b.group_order(&["FSFilter Anti-Virus"])
            .driver("x", 0, Some("FSFilter Anti-Virus"), None)
            .minifilter_instance("x", "x Instance", "360000")
            .driver("y", 0, Some("FSFilter Anti-Virus"), None)
            .minifilter_instance("y", "y Instance", "0328000.0")
            .driver("z", 0, Some("FSFilter Anti-Virus"), None)
            .minifilter_instance("z", "z Instance", "328000");
        let a = Analysis::from_control_set(b.root(), &NeedsTable::empty()).unwrap();
        let out: Vec<_> = a
            .hazards_with(HazardId::AltitudeOutsideGroupRange)
            .collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].severity, Severity::Info);
        let c: Vec<_> = a.hazards_with(HazardId::AltitudeCollision).collect();
        assert_eq!(c.len(), 1, "{:#?}", a.hazards);
        assert_eq!(c[0].severity, Severity::Warning);
        assert_eq!(c[0].services, ["y", "z"]);
        // A disabled filter never loads: no collision.
        b.service_key("z")
            .set_value("Start", crate::registry::RegValue::Dword(4));
        let a = Analysis::from_control_set(b.root(), &NeedsTable::empty()).unwrap();
        assert_eq!(a.hazards_with(HazardId::AltitudeCollision).count(), 0);
    }

    #[test]
    fn boot_images_under_the_system_root_are_notes() {
        assert!(image_under_system_root(r"System32\CLFS.sys"));
        assert!(image_under_system_root(r"\SystemRoot\System32\x.sys"));
        assert!(image_under_system_root(r"\??\C:\Windows\system32\x.sys"));
        assert!(!image_under_system_root(r"\??\C:\Program Files\X\x.sys"));
        assert!(!image_under_system_root(r"\??\D:\drivers\x.sys"));
        assert!(!image_under_system_root(r"System32\..\..\x.sys"));
        let mut b = ControlSetBuilder::new();
        b.driver("clfs", 0, None, None)
            .driver("prod", 0, None, None);
        b.service_key("clfs").set_value(
            "ImagePath",
            crate::registry::RegValue::ExpandSz(r"System32\CLFS.sys".into()),
        );
        b.service_key("prod").set_value(
            "ImagePath",
            crate::registry::RegValue::ExpandSz(r"\??\C:\Program Files\P\prod.sys".into()),
        );
        let a = Analysis::from_control_set(b.root(), &NeedsTable::empty()).unwrap();
        let sev = |n: &str| {
            a.hazards_with(HazardId::BootImageOutsideDrivers)
                .find(|h| h.services[0] == n)
                .unwrap()
                .severity
        };
        assert_eq!(sev("clfs"), Severity::Info);
        assert_eq!(sev("prod"), Severity::Warning);
    }

    #[test]
    fn the_vmci_host_device_is_the_one_that_counts() {
        // vmci drives the PCI bus device and the root-enumerated host
        // device; VMCIHostDev comes from the host device's start.
        let machine = |filtered: &str| {
            let mut b = ControlSetBuilder::new();
            b.group_order(&["System Bus Extender", "FSFilter Anti-Virus", "Base"])
                .driver("vmci", 0, Some("System Bus Extender"), Some(1))
                .driver("vsock", 0, Some("System Bus Extender"), Some(2))
                .driver("devflt", 0, Some("Base"), None)
                .driver("vsepflt", 0, Some("FSFilter Anti-Virus"), None)
                .device(
                    r"PCI\VEN_15AD&DEV_0740\1",
                    "vmci",
                    crate::model::SYSTEM_CLASS_GUID,
                )
                .device(
                    r"ROOT\VMWVMCIHOSTDEV\0000",
                    "vmci",
                    crate::model::SYSTEM_CLASS_GUID,
                )
                .device_filters(filtered, &["devflt"], &[]);
            Analysis::from_control_set(b.root(), &NeedsTable::builtin()).unwrap()
        };
        let a = machine(r"ROOT\VMWVMCIHOSTDEV\0000");
        let h = a
            .hazards_with(HazardId::DeviceFilterDefersNeededDevice)
            .next()
            .unwrap_or_else(|| panic!("{:#?}", a.hazards));
        assert_eq!(h.services, ["vsepflt", "vsock", "vmci", "devflt"]);
        let a = machine(r"PCI\VEN_15AD&DEV_0740\1");
        assert_eq!(
            a.hazards_with(HazardId::DeviceFilterDefersNeededDevice)
                .count(),
            0,
            "{:#?}",
            a.hazards
        );
    }

    #[test]
    fn missing_filter_is_an_error() {
        let mut b = ControlSetBuilder::new();
        b.driver("fd", 0, None, None)
            .device(r"ROOT\X\0000", "fd", "{c}")
            .device_filters(r"ROOT\X\0000", &["gone"], &[]);
        let a = Analysis::from_control_set(b.root(), &NeedsTable::empty()).unwrap();
        let h = a.hazards_with(HazardId::FilterMissing).next().unwrap();
        assert_eq!(h.severity, Severity::Error);
        assert_eq!(h.services, ["fd", "gone"]);
    }
}
