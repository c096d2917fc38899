//! Property tests of the order:
//!
//! * it never starts anything before what it is declared to wait for: a
//!   device stack starts after every member's `DriverEntry` (or after the
//!   system phase begins, for demand/auto-start members), boot-start drivers
//!   precede system-start drivers, listed groups keep the list's order and
//!   tags keep the vector's order within a group;
//! * adding an unrelated service never changes the relative order of the
//!   others (drivers and device starts).

use proptest::prelude::*;
use thinagent_bootsim::model::{ControlSetBuilder, Model, fold};
use thinagent_bootsim::order::{LoadOrder, Phase, Step, compute_order};

#[derive(Debug, Clone)]
struct Svc {
    start: u32,
    /// `Some(i)`: listed group i (mod the list length); `Some(>= 100)`: an
    /// unknown group.
    group: Option<usize>,
    tag: Option<u32>,
    /// Device of class `class` (0..3) when set.
    device: Option<usize>,
    /// Device-level upper filter: index of another service, or a missing one.
    dev_filter: Option<usize>,
}

#[derive(Debug, Clone)]
struct Machine {
    groups: usize,
    vectors: Vec<Vec<u32>>,
    services: Vec<Svc>,
    /// Class filters: (class, upper?, service index or missing).
    class_filters: Vec<(usize, bool, usize)>,
}

fn svc() -> impl Strategy<Value = Svc> {
    (
        prop_oneof![Just(0u32), Just(0), Just(1), Just(2), Just(3), Just(4)],
        prop::option::of(prop_oneof![0usize..8, 100usize..102]),
        prop::option::of(1u32..10),
        prop::option::weighted(0.4, 0usize..3),
        prop::option::weighted(0.2, 0usize..40),
    )
        .prop_map(|(start, group, tag, device, dev_filter)| Svc {
            start,
            group,
            tag,
            device,
            dev_filter,
        })
}

fn machine() -> impl Strategy<Value = Machine> {
    (1usize..6)
        .prop_flat_map(|groups| {
            (
                Just(groups),
                prop::collection::vec(
                    prop::collection::vec(1u32..10, 0..6).prop_map(|mut v| {
                        v.dedup();
                        v
                    }),
                    groups,
                ),
                prop::collection::vec(svc(), 1..20),
                prop::collection::vec((0usize..3, any::<bool>(), 0usize..40), 0..4),
            )
        })
        .prop_map(|(groups, vectors, services, class_filters)| Machine {
            groups,
            vectors,
            services,
            class_filters,
        })
}

fn name(i: usize) -> String {
    format!("s{i:02}")
}

fn build(m: &Machine, extra: Option<&Svc>) -> Model {
    let mut b = ControlSetBuilder::new();
    let groups: Vec<String> = (0..m.groups).map(|g| format!("G{g}")).collect();
    let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
    b.group_order(&refs);
    for (g, v) in m.vectors.iter().enumerate() {
        if !v.is_empty() {
            b.tag_vector(&groups[g], v);
        }
    }
    let n = m.services.len();
    let filter_name = |i: usize| {
        if i < n {
            name(i)
        } else {
            format!("missing{i}")
        }
    };
    let mut all: Vec<(String, &Svc)> = m
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (name(i), s))
        .collect();
    if let Some(e) = extra {
        all.push(("zz_unrelated".to_string(), e));
    }
    for (i, (svc_name, s)) in all.iter().enumerate() {
        let group = s.group.map(|g| {
            if g >= 100 {
                format!("Unknown{g}")
            } else {
                groups[g % m.groups].clone()
            }
        });
        b.driver(svc_name, s.start, group.as_deref(), s.tag);
        if let Some(class) = s.device {
            let path = format!(r"ROOT\DEV{i}\0000");
            b.device(&path, svc_name, &format!("{{class-{class}}}"));
            // The unrelated service's filters would relate it: none.
            if let (Some(f), false) = (s.dev_filter, svc_name.starts_with("zz")) {
                b.device_filters(&path, &[&filter_name(f)], &[]);
            }
        }
    }
    for class in 0..3 {
        let upper: Vec<String> = m
            .class_filters
            .iter()
            .filter(|(c, u, _)| *c == class && *u)
            .map(|(_, _, f)| filter_name(*f))
            .collect();
        let lower: Vec<String> = m
            .class_filters
            .iter()
            .filter(|(c, u, _)| *c == class && !*u)
            .map(|(_, _, f)| filter_name(*f))
            .collect();
        let u: Vec<&str> = upper.iter().map(String::as_str).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        b.class(&format!("{{class-{class}}}"), "C", &u, &l);
    }
    Model::from_control_set(b.root()).unwrap()
}

fn step_index(o: &LoadOrder, service: &str) -> Option<usize> {
    o.init_step(service)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn never_starts_anything_before_what_it_waits_for(m in machine()) {
        let model = build(&m, None);
        let o = compute_order(&model);
        let begins = o.marker_step(&Step::SystemPhaseBegins).unwrap();
        for (i, step) in o.steps.iter().enumerate() {
            let Step::StartDevice(ds) = step else { continue };
            for (member, _) in &ds.stack {
                let svc = model.service(member).expect("a started stack has every member");
                match step_index(&o, member) {
                    Some(j) => prop_assert!(j < i, "{member} initialises at {j}, device {} starts at {i}", ds.device),
                    None => prop_assert!(begins < i, "{member} is {:?}, device starts at {i}", svc.start),
                }
            }
        }
        // Phases, then groups, then tags.
        for w in o.entries.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            prop_assert!(a.phase <= b.phase);
            if a.phase == b.phase {
                let ga = a.group_index.unwrap_or(usize::MAX);
                let gb = b.group_index.unwrap_or(usize::MAX);
                prop_assert!(ga <= gb, "{} ({ga}) before {} ({gb})", a.service, b.service);
                if ga == gb && ga != usize::MAX {
                    prop_assert!(a.tag_rank.key() <= b.tag_rank.key());
                }
            }
        }
        // Every boot/system-start driver is in the order exactly once.
        let expected = model.services.values().filter(|s| matches!(s.start.map(|s| s.as_u32()), Some(0 | 1))).count();
        prop_assert_eq!(o.entries.len(), expected);
        let phases_match = o.entries.iter().all(|e| {
            let want = if e.start.as_u32() == 0 { Phase::Boot } else { Phase::System };
            e.phase == want
        });
        prop_assert!(phases_match);
    }

    #[test]
    fn an_unrelated_service_does_not_change_the_relative_order(m in machine(), extra in svc()) {
        let before = compute_order(&build(&m, None));
        let after = compute_order(&build(&m, Some(&extra)));
        let names = |o: &LoadOrder| -> Vec<String> {
            o.steps
                .iter()
                .filter_map(|s| match s {
                    Step::InitDriver { service, .. } => Some(fold(service)),
                    Step::StartDevice(d) => Some(format!("dev:{}", fold(&d.device))),
                    _ => None,
                })
                .filter(|n| !n.contains("zz_unrelated") && !n.contains(&format!(r"dev{}\", m.services.len())))
                .collect()
        };
        prop_assert_eq!(names(&before), names(&after));
    }
}
