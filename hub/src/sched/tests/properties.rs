//! Placement's property tests, over random fleets built as the core keeps them: never an
//! ineligible agent, the admission rule followed, local-only work kept local, warm before cold.

use super::*;
use proptest::prelude::*;

fn arb_fleet() -> impl Strategy<Value = World> {
    let endpoint = (0..4usize, 0..3usize, any::<bool>(), any::<bool>(), 1u64..8_000_000_000, 0u32..3);
    let sidecars = (prop::collection::vec(endpoint, 0..10), prop::collection::vec((0..4usize, 0..3u8), 0..8));
    (sidecars, any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|((endpoints, agents), capable, gpu, same_host)| {
        let sidecar = |n: usize| format!("s{n}");
        let mut fleet = World::default();
        for (n, slot) in agents {
            fleet.idle.insert(&sidecar(n), &format!("s{n}/{slot}"));
        }
        for (n, model, loaded, healthy, size, flight) in endpoints {
            let mut e = ollama(&sidecar(n), &format!("m{model}"), loaded, size);
            e.url = format!("{}/{}", e.url, fleet.endpoints.len());
            e.id = crate::fleet::endpoint_id(&e.owner, &e.url);
            e.healthy = healthy;
            fleet.in_flight.insert(e.id.clone(), flight);
            fleet.endpoints.push(e);
        }
        let names: [&'static str; 4] = ["s0", "s1", "s2", "s3"];
        fleet.can =
            (0..4).filter(|n| capable & (1 << n) != 0).flat_map(|n| [(names[n], "llm"), (names[n], "shell")]).collect();
        for n in 0..4 {
            if gpu & (1 << n) != 0 {
                fleet.tags.insert(sidecar(n), vec!["gpu".into()]);
            }
            // Some sidecars share a host.
            let host = if same_host & (1 << n) != 0 { "shared".to_owned() } else { format!("host-{n}") };
            fleet.hostnames.insert(sidecar(n), host);
        }
        fleet
    })
}

/// Where a task may go: nowhere in particular, on a GPU, on a host, on a sidecar by id.
fn arb_placement() -> impl Strategy<Value = Placement> {
    (any::<bool>(), prop_oneof![Just(""), Just("shared"), Just("host-1"), Just("s2"), Just("elsewhere")]).prop_map(
        |(gpu, host)| Placement {
            tags: if gpu { vec!["gpu".into()] } else { Vec::new() },
            host: host.to_owned(),
            ..Placement::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Never an ineligible agent: idle, on a capable sidecar, with a healthy endpoint that
    /// has the model; and the same view gives the same decision.
    #[test]
    fn placements_are_eligible_and_deterministic(fleet in arb_fleet(), model in 0..3usize, placement in arb_placement()) {
        let mut task = llm_task(&format!("m{model}"));
        task.spec.placement = placement;
        let owned = fleet.owned();
        let view = owned.view();
        let decision = place(&task, &view, 0);
        prop_assert_eq!(&decision, &place(&task, &view, 0));
        // The admission rule is the hub's own: `Fleet::admits` over the sidecars it keeps.
        let eligible: Vec<&Endpoint> = fleet
            .endpoints
            .iter()
            .filter(|e| e.healthy && e.models.iter().any(|m| m.name == format!("m{model}")))
            .filter(|e| {
                let Owner::Sidecar(s) = &e.owner else { return false };
                view.admits(s, &task) && fleet.idle.iter().any(|(id, agents)| id == s && !agents.is_empty())
            })
            .collect();
        match &decision {
            Decision::Place { sidecar_id, agent_id, endpoint_id, .. } => {
                let endpoint = eligible.iter().find(|e| Some(&e.id) == endpoint_id.as_ref());
                prop_assert!(endpoint.is_some(), "placed on an ineligible endpoint");
                prop_assert_eq!(&endpoint.unwrap().owner, &Owner::Sidecar(sidecar_id.clone()));
                prop_assert!(fleet.idle.iter().any(|(s, agents)| s == sidecar_id && agents.contains(agent_id)));
            }
            Decision::Wait(_) => prop_assert!(eligible.is_empty(), "waits while {} candidates exist", eligible.len()),
        }
    }

    /// Work placed by capability goes to an idle sidecar that admits and takes it, the one
    /// with the most idle agents; it waits only when there is none, and says why the same way
    /// whichever sidecars there are.
    #[test]
    fn capability_placement_follows_the_admission_rule(fleet in arb_fleet(), placement in arb_placement()) {
        let mut task = shell_task();
        task.spec.placement = placement;
        let owned = fleet.owned();
        let view = owned.view();
        let eligible: Vec<(&String, usize)> = fleet
            .idle
            .iter()
            .filter(|(s, agents)| !agents.is_empty() && view.admits(s, &task) && view.takes(s, &task))
            .map(|(s, agents)| (s, agents.len()))
            .collect();
        match place(&task, &view, 0) {
            Decision::Place { sidecar_id, .. } => {
                let most = eligible.iter().map(|(_, n)| *n).max();
                let chosen = eligible.iter().find(|(s, _)| **s == sidecar_id).map(|(_, n)| *n);
                prop_assert!(chosen.is_some(), "placed on {} which does not admit it", sidecar_id);
                prop_assert_eq!(chosen, most, "not the sidecar with the most idle agents");
            }
            Decision::Wait(why) => {
                prop_assert!(eligible.is_empty(), "waits ({:?}) while {:?} could take it", why, eligible);
                // Busy exactly when some open sidecar would take it once an agent frees.
                let someone_would = view.open().any(|(id, _)| view.admits(id, &task) && view.takes(id, &task));
                prop_assert_eq!(why == Wait::AllBusy, someone_would, "{:?}", why);
            }
        }
    }

    /// `local_only` work never reaches a cloud candidate, however much sooner it would finish.
    #[test]
    fn local_only_never_reaches_a_cloud_candidate(fleet in arb_fleet(), model in 0..3usize, cloud_in in 0..4usize) {
        let mut fleet = fleet;
        let mut claude = Endpoint::new(Owner::Sidecar(format!("s{cloud_in}")), "https://api.anthropic.com".into(), EndpointKind::Anthropic);
        claude.healthy = true;
        claude.models = vec![Model { loaded: true, ..Model::named(format!("m{model}")) }];
        let claude_id = claude.id.clone();
        fleet.endpoints.push(claude);
        let mut task = llm_task(&format!("m{model}"));
        task.spec.placement.local_only = true;
        match place(&task, &fleet.owned().view(), 0) {
            Decision::Place { endpoint_id, .. } => prop_assert_ne!(endpoint_id, Some(claude_id)),
            Decision::Wait(_) => {}
        }
    }

    /// Warm beats cold when all else is equal.
    #[test]
    fn warm_beats_cold_when_all_else_is_equal(size in 1u64..100_000_000_000, flight in 0u32..5) {
        let mut fleet = warm_and_cold();
        for e in &mut fleet.endpoints {
            e.models[0].size_bytes = size;
            fleet.in_flight.insert(e.id.clone(), flight);
        }
        let decision = place(&llm_task("m"), &fleet.owned().view(), 0);
        prop_assert_eq!(placed_on(&decision), "warm");
    }
}
