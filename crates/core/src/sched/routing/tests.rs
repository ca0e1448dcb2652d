use super::Strategy;
use super::*;
use crate::sched::breaker::{Breakers, Options as BreakerOptions, Outcome};
use crate::sched::Hints;
use crate::Priority;
use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Map, Value};

fn id(s: &str) -> AgentId {
    AgentId::parse(s).unwrap()
}

fn agent(name: &str, in_flight: u32, max: u32) -> AgentView {
    AgentView {
        agent_type: "llm".into(),
        avg_task_ms: 1_000.0,
        ..AgentView::new(id(name), vec!["summarize".into()], in_flight, max)
    }
}

fn empty() -> &'static Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Map::new)
}

fn task() -> TaskFacts<'static> {
    TaskFacts {
        task_type: "summarize",
        priority: Priority::Normal,
        metadata: empty(),
        hints: Hints::default(),
    }
}

fn keyed(key: &str) -> TaskFacts<'static> {
    let mut t = task();
    t.hints.routing_key = Some(key.into());
    t
}

fn names(snap: &Snapshot, picks: &[usize]) -> Vec<String> {
    picks
        .iter()
        .map(|&i| snap[i].agent_id.to_string())
        .collect()
}

#[test]
fn strategy_names_round_trip_and_unknown_is_a_clear_error() {
    for s in Strategy::ALL {
        assert_eq!(Strategy::parse(s.as_str()).unwrap(), s);
        assert_eq!(s.to_string().parse::<Strategy>().unwrap(), s);
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            json!(s.as_str()),
            "serde uses the same names"
        );
    }
    assert_eq!(
        Strategy::parse("Least-Loaded").unwrap(),
        Strategy::LeastLoaded
    );
    assert_eq!(Strategy::default(), Strategy::LeastLoaded);
    let e = Strategy::parse("fastest").unwrap_err();
    assert_eq!(e.code, crate::ErrorCode::InvalidArgument);
    assert_eq!(
        e.message,
        "unknown routing strategy \"fastest\": use one of least_loaded, round_robin, \
         weighted_capacity, weighted_random, cost_based, consistent_hash, affinity, \
         content_based, failover, broadcast"
    );
    assert_eq!(e.details["field"], "routing_strategy");
}

#[test]
fn snapshot_sorts_dedups_and_finds() {
    let mut b = agent("b", 0, 1);
    b.capabilities = vec!["z".into(), "a".into()];
    let snap = Snapshot::new(vec![b, agent("a", 0, 1), agent("b", 5, 9)]);
    assert_eq!(names(&snap, &[0, 1]), ["a", "b"]);
    assert_eq!(snap.len(), 2);
    assert_eq!(snap[1].capabilities, ["a", "z"]);
    assert_eq!(snap.position(&id("b")), Some(1));
    assert_eq!(snap.position(&id("c")), None);
}

#[test]
fn eligibility() {
    let t = task();
    assert!(agent("a", 0, 1).eligible(&t));
    assert!(!agent("a", 1, 1).eligible(&t), "full");
    assert!(!agent("a", 0, 0).eligible(&t), "no slots at all");
    assert!(!AgentView {
        routable: false,
        ..agent("a", 0, 1)
    }
    .eligible(&t));
    assert!(!AgentView {
        health: 0.49,
        ..agent("a", 0, 1)
    }
    .eligible(&t));
    assert!(AgentView {
        health: 0.5,
        ..agent("a", 0, 1)
    }
    .eligible(&t));
    assert!(!AgentView {
        capabilities: vec!["other".into()],
        ..agent("a", 0, 1)
    }
    .eligible(&t));
}

#[test]
fn least_loaded_prefers_lower_ratio_then_more_free_slots_then_id() {
    let snap = Snapshot::new(vec![
        agent("a", 2, 4), // 0.5
        agent("b", 1, 4), // 0.25, 3 free
        agent("c", 2, 8), // 0.25, 6 free
        agent("d", 0, 0), // never
    ]);
    assert_eq!(least_loaded(&snap, &task()), Some(2));
    let tie = Snapshot::new(vec![agent("y", 1, 2), agent("x", 1, 2)]);
    assert_eq!(names(&tie, &[least_loaded(&tie, &task()).unwrap()]), ["x"]);
    assert_eq!(least_loaded(&Snapshot::default(), &task()), None);
}

#[test]
fn round_robin_cycles_in_id_order_and_skips_ineligible() {
    let mut snap = Snapshot::new(vec![agent("c", 0, 9), agent("a", 0, 9), agent("b", 0, 9)]);
    let mut cursor = 0;
    let picks: Vec<usize> = (0..6)
        .map(|_| round_robin(&snap, &task(), &mut cursor).unwrap())
        .collect();
    assert_eq!(names(&snap, &picks), ["a", "b", "c", "a", "b", "c"]);
    snap.modify_all(|a| {
        if a.agent_id == id("b") {
            a.in_flight = 9;
        }
    });
    let picks: Vec<usize> = (0..4)
        .map(|_| round_robin(&snap, &task(), &mut cursor).unwrap())
        .collect();
    assert_eq!(names(&snap, &picks), ["a", "c", "a", "c"]);
}

#[test]
fn weighted_capacity_converges_to_shares() {
    // Shares weight × max: 1×100, 2×100, 1×300 = 100 : 200 : 300.
    let mut views = vec![agent("a", 0, 100), agent("b", 0, 100), agent("c", 0, 300)];
    views[1].weight = 2.0;
    views.push(AgentView {
        weight: 0.0,
        ..agent("z", 0, 100)
    });
    let mut snap = Snapshot::new(views);
    let mut counts = [0u32; 4];
    for _ in 0..300 {
        let i = weighted_capacity(&snap, &task()).unwrap();
        counts[i] += 1;
        let mut all: Vec<AgentView> = snap.into_inner();
        all[i].in_flight += 1;
        snap = Snapshot::new(all);
    }
    assert_eq!(counts, [50, 100, 150, 0]);
}

#[test]
fn weighted_random_follows_the_sample_and_converges() {
    let mut views = vec![agent("a", 0, 9), agent("b", 0, 9), agent("c", 0, 9)];
    views[1].weight = 3.0;
    views[2].in_flight = 9; // full: never
    let snap = Snapshot::new(views);
    // Cumulative weights of the eligible: a [0, 1), b [1, 4) over a total of 4.
    assert_eq!(weighted_random(&snap, &task(), 0.0), Some(0));
    assert_eq!(weighted_random(&snap, &task(), 0.2499), Some(0));
    assert_eq!(weighted_random(&snap, &task(), 0.25), Some(1));
    assert_eq!(weighted_random(&snap, &task(), 0.999_999), Some(1));
    assert_eq!(weighted_random(&snap, &task(), 1.0), Some(1));
    let mut rng = StdRng::seed_from_u64(7);
    let n = 40_000;
    let mut counts = [0u32; 3];
    for _ in 0..n {
        counts[weighted_random(&snap, &task(), rng.random::<f64>()).unwrap()] += 1;
    }
    assert_eq!(counts[2], 0);
    let share_b = f64::from(counts[1]) / f64::from(n);
    assert!((share_b - 0.75).abs() < 0.01, "b got {share_b}");
    let zero = Snapshot::new(vec![AgentView {
        weight: 0.0,
        ..agent("a", 0, 1)
    }]);
    assert_eq!(weighted_random(&zero, &task(), 0.5), None);
}

#[test]
fn cost_score_is_seed_001s_formula() {
    // cost_factor 2, average 1800 s, complexity 1.5, 1 of 4 active:
    // 2 × (1800 × 1.5 / 3600) × (1 + 0.25) = 2 × 0.75 × 1.25 = 1.875
    let a = AgentView {
        cost_factor: 2.0,
        avg_task_ms: 1_800_000.0,
        ..agent("a", 1, 4)
    };
    assert!((cost_score(&a, 1.5) - 1.875).abs() < 1e-12);
    // Unknown average: one second.
    let b = AgentView {
        avg_task_ms: 0.0,
        ..agent("b", 0, 4)
    };
    assert!((cost_score(&b, 1.0) - 1.0 / 3600.0).abs() < 1e-15);
}

#[test]
fn cost_based_picks_the_cheapest_including_the_utilisation_penalty() {
    let snap = Snapshot::new(vec![
        AgentView {
            cost_factor: 3.0,
            ..agent("pricey", 0, 4)
        },
        AgentView {
            cost_factor: 1.0,
            ..agent("cheap-busy", 3, 4)
        }, // 1 × 1.75
        AgentView {
            cost_factor: 1.5,
            ..agent("mid-idle", 0, 4)
        }, // 1.5 × 1
        AgentView {
            cost_factor: 0.1,
            ..agent("cheapest-full", 4, 4)
        },
    ]);
    assert_eq!(
        names(&snap, &[cost_based(&snap, &task()).unwrap()]),
        ["mid-idle"]
    );
}

#[test]
fn consistent_hash_is_stable_and_falls_through_clockwise() {
    let views: Vec<AgentView> = (0..5).map(|i| agent(&format!("a{i}"), 0, 9)).collect();
    let mut snap = Snapshot::new(views);
    let ring = HashRing::with_members(64, snap.iter().map(|a| &a.agent_id));
    let t = keyed("customer-42");
    let first = consistent_hash(&snap, &t, &ring).unwrap();
    assert_eq!(snap[first].agent_id, *ring.owner("customer-42").unwrap());
    for _ in 0..10 {
        assert_eq!(consistent_hash(&snap, &t, &ring), Some(first));
    }
    // The owner fills up: the next agent clockwise, the same one every time.
    let owner = snap[first].agent_id.clone();
    snap.modify_all(|a| {
        if a.agent_id == owner {
            a.in_flight = 9;
        }
    });
    let next = ring
        .walk("customer-42")
        .find(|a| **a != owner)
        .unwrap()
        .clone();
    let second = consistent_hash(&snap, &t, &ring).unwrap();
    assert_eq!(snap[second].agent_id, next);
    // No key: least-loaded.
    assert!(consistent_hash(&snap, &task(), &ring).is_some());
    // Agents not on the ring are never chosen.
    let off_ring = Snapshot::new(vec![agent("stranger", 0, 9)]);
    assert_eq!(consistent_hash(&off_ring, &t, &ring), None);
}

#[test]
fn affinity_sticks_until_the_agent_cannot_take_work() {
    let mut snap = Snapshot::new(vec![agent("a", 0, 9), agent("b", 1, 9), agent("c", 2, 9)]);
    let mut map = AffinityMap::default();
    let t = keyed("session-1");
    assert_eq!(affinity(&snap, &t, &mut map, 0), Some(0));
    // a becomes the busiest, but the key stays with it.
    snap.modify_all(|a| {
        if a.agent_id == id("a") {
            a.in_flight = 8;
        }
    });
    assert_eq!(affinity(&snap, &t, &mut map, 1), Some(0));
    // a's breaker opens: the key moves to the least loaded (b) and sticks there.
    snap.modify_all(|a| {
        if a.agent_id == id("a") {
            a.routable = false;
        }
    });
    assert_eq!(affinity(&snap, &t, &mut map, 2), Some(1));
    snap.modify_all(|a| a.routable = true);
    assert_eq!(affinity(&snap, &t, &mut map, 3), Some(1));
    assert_eq!(map.get("session-1", 3), Some(&id("b")));
    // Without a key nothing is remembered.
    affinity(&snap, &task(), &mut map, 4);
    assert_eq!(map.len(), 1);
}

#[test]
fn content_based_rules_choose_the_target() {
    let meta: &'static Map<String, Value> = Box::leak(Box::new(
        json!({"tenant": "acme", "modality": "image"})
            .as_object()
            .unwrap()
            .clone(),
    ));
    let t = TaskFacts {
        metadata: meta,
        ..task()
    };
    let snap = Snapshot::new(vec![
        AgentView {
            agent_type: "vision".into(),
            ..agent("v1", 3, 4)
        },
        AgentView {
            agent_type: "vision".into(),
            ..agent("v2", 1, 4)
        },
        AgentView {
            tags: vec!["gold".into()],
            ..agent("g1", 0, 4)
        },
        agent("plain", 0, 4),
    ]);
    let rules = parse_rules(&[
        "metadata.modality == image => type:vision",
        "metadata.tenant == acme => tag:gold",
    ])
    .unwrap();
    assert_eq!(
        names(&snap, &[content_based(&snap, &t, &rules).unwrap()]),
        ["v2"]
    );
    // First matching rule wins even if a later one would match too.
    assert_eq!(
        names(&snap, &[content_based(&snap, &t, &rules[1..]).unwrap()]),
        ["g1"]
    );
    // A matched rule with no eligible target is not widened.
    let gpu = parse_rules(&["metadata.tenant == acme => type:gpu"]).unwrap();
    assert_eq!(content_based(&snap, &t, &gpu), None);
    // No rule matches: least-loaded over all (g1 and plain both idle, g1 first).
    let other = parse_rules(&["metadata.tenant == other => type:gpu"]).unwrap();
    assert_eq!(
        names(&snap, &[content_based(&snap, &t, &other).unwrap()]),
        ["g1"]
    );
}

#[test]
fn failover_takes_the_first_eligible_preference() {
    let snap = Snapshot::new(vec![
        agent("primary", 4, 4),
        AgentView {
            health: 0.1,
            ..agent("secondary", 0, 4)
        },
        agent("tertiary", 0, 4),
        agent("other", 0, 4),
    ]);
    let pref = [
        id("missing"),
        id("primary"),
        id("secondary"),
        id("tertiary"),
    ];
    assert_eq!(
        names(&snap, &[failover(&snap, &task(), &pref).unwrap()]),
        ["tertiary"]
    );
    assert_eq!(failover(&snap, &task(), &pref[..3]), None);
    // The task's own list wins over the router's.
    let mut router = Router {
        failover: vec![id("other")],
        ..Default::default()
    };
    assert_eq!(
        names(
            &snap,
            &router.route(Strategy::Failover, &snap, &task(), 0.0, 0)
        ),
        ["other"]
    );
    let mut t = task();
    t.hints.preferred_agents = vec![id("tertiary")];
    assert_eq!(
        names(&snap, &router.route(Strategy::Failover, &snap, &t, 0.0, 0)),
        ["tertiary"]
    );
}

#[test]
fn broadcast_reaches_every_eligible_agent() {
    let snap = Snapshot::new(vec![
        agent("a", 0, 1),
        agent("b", 1, 1),
        AgentView {
            routable: false,
            ..agent("c", 0, 1)
        },
        agent("d", 0, 1),
    ]);
    assert_eq!(names(&snap, &broadcast(&snap, &task())), ["a", "d"]);
}

#[test]
fn open_breakers_take_agents_out_of_routing() {
    let mut breakers = Breakers::new(BreakerOptions::default()).unwrap();
    for _ in 0..5 {
        breakers.record(&id("a"), Outcome::Failure, 0);
    }
    let mut snap = Snapshot::new(vec![agent("a", 0, 9), agent("b", 5, 9)]);
    breakers.exclude_open(&mut snap, 1_000);
    let mut router = Router::default();
    for s in Strategy::ALL {
        let picks = router.route(s, &snap, &task(), 0.0, 0);
        assert!(!names(&snap, &picks).contains(&"a".to_string()), "{s}");
    }
    // After 60 s the breaker half-opens and a may take a probe again.
    let mut later = Snapshot::new(vec![agent("a", 0, 9), agent("b", 5, 9)]);
    breakers.exclude_open(&mut later, 60_000);
    assert_eq!(least_loaded(&later, &task()), Some(0));
}

fn arb_view() -> impl proptest::strategy::Strategy<Value = AgentView> {
    (
        0usize..30,
        0u32..6,
        0u32..5,
        0.0f64..1.0,
        any::<bool>(),
        0u8..4,
        0.0f64..3.0,
        0u8..3,
    )
        .prop_map(
            |(n, in_flight, max, health, routable, caps, weight, ty)| AgentView {
                agent_id: id(&format!("agent-{n}")),
                agent_type: ["llm", "vision", "tool"][ty as usize].into(),
                capabilities: match caps {
                    0 => vec![],
                    1 => vec!["other".into()],
                    _ => vec!["summarize".into()],
                },
                tags: if ty == 0 { vec!["gold".into()] } else { vec![] },
                location: None,
                in_flight,
                max_concurrency: max,
                weight,
                cost_factor: weight,
                avg_task_ms: 500.0,
                health,
                routable,
            },
        )
}

proptest! {
    /// No strategy ever picks an unhealthy, breaker-open, full or non-serving
    /// agent, and the strategies that can always pick do when any agent is eligible.
    #[test]
    fn strategies_only_pick_eligible_agents(
        views in proptest::collection::vec(arb_view(), 0..20),
        sample in 0.0f64..1.0,
        key in proptest::option::of("[a-z]{1,6}"),
        cursor in any::<u64>(),
    ) {
        let snap = Snapshot::new(views);
        let mut t = task();
        t.hints.routing_key = key;
        t.hints.preferred_agents = snap.iter().rev().map(|a| a.agent_id.clone()).collect();
        let mut router = Router {
            cursor,
            ring: HashRing::with_members(16, snap.iter().map(|a| &a.agent_id)),
            rules: parse_rules(&["priority == normal => tag:gold"]).unwrap(),
            ..Default::default()
        };
        let any_eligible = snap.iter().any(|a| a.eligible(&t));
        for s in Strategy::ALL {
            let picks = router.route(s, &snap, &t, sample, 0);
            for &i in &picks {
                prop_assert!(snap[i].eligible(&t), "{} picked {:?}", s, snap[i]);
            }
            match s {
                Strategy::Broadcast => {
                    prop_assert_eq!(picks.len(), snap.iter().filter(|a| a.eligible(&t)).count());
                }
                Strategy::WeightedCapacity | Strategy::WeightedRandom | Strategy::ContentBased => {
                    prop_assert!(picks.len() <= 1);
                }
                _ => prop_assert_eq!(picks.len(), usize::from(any_eligible), "{}", s),
            }
        }
    }

    /// Weighted by capacity: after many decisions (nothing finishing) each agent
    /// holds its share of the work to within one task per agent.
    #[test]
    fn weighted_capacity_follows_random_shares(
        weights in proptest::collection::vec(0u32..5, 1..8),
        picks in 1usize..400,
    ) {
        let views: Vec<AgentView> = weights.iter().enumerate()
            .map(|(i, w)| AgentView { weight: f64::from(*w), ..agent(&format!("a{i}"), 0, 1_000) })
            .collect();
        let mut snap = Snapshot::new(views);
        let total: f64 = snap.iter().map(|a| a.weight).sum();
        for _ in 0..picks {
            match weighted_capacity(&snap, &task()) {
                Some(i) => {
                    let mut all = snap.into_inner();
                    all[i].in_flight += 1;
                    snap = Snapshot::new(all);
                }
                None => {
                    prop_assert_eq!(total, 0.0);
                    return Ok(());
                }
            }
        }
        let n = snap.len() as f64;
        for a in snap.iter() {
            let quota = picks as f64 * a.weight / total;
            prop_assert!((f64::from(a.in_flight) - quota).abs() <= n, "{} has {} for a quota of {}", a.agent_id, a.in_flight, quota);
            if a.weight == 0.0 {
                prop_assert_eq!(a.in_flight, 0);
            }
        }
    }

    /// Removing one agent from the snapshot only moves the keys it held.
    #[test]
    fn consistent_hash_moves_only_the_leavers_keys(
        n in 2usize..15, gone in 0usize..15,
        keys in proptest::collection::vec("[a-z0-9]{1,10}", 1..100),
    ) {
        let views: Vec<AgentView> = (0..n).map(|i| agent(&format!("a{i}"), 0, 9)).collect();
        let before = Snapshot::new(views.clone());
        let gone_id = views[gone % n].agent_id.clone();
        let after = Snapshot::new(views.into_iter().filter(|a| a.agent_id != gone_id).collect());
        let ring = HashRing::with_members(32, before.iter().map(|a| &a.agent_id));
        for key in keys {
            let t = keyed(&key);
            let was = before[consistent_hash(&before, &t, &ring).unwrap()].agent_id.clone();
            let now = after[consistent_hash(&after, &t, &ring).unwrap()].agent_id.clone();
            if was != gone_id {
                prop_assert_eq!(was, now);
            }
        }
    }
}

/// The strategies as first written, over the views alone: the dense snapshot
/// must pick exactly what these pick.
mod reference {
    use super::super::*;

    fn min_by<K: PartialOrd>(
        snap: &[AgentView],
        task: &TaskFacts,
        mut key: impl FnMut(&AgentView) -> K,
    ) -> Option<usize> {
        let mut best: Option<(usize, K)> = None;
        for (i, a) in snap.iter().enumerate() {
            if !a.eligible(task) {
                continue;
            }
            let k = key(a);
            if best.as_ref().is_none_or(|(_, b)| k < *b) {
                best = Some((i, k));
            }
        }
        best.map(|(i, _)| i)
    }

    pub fn least_loaded(snap: &[AgentView], task: &TaskFacts) -> Option<usize> {
        min_by(snap, task, |a| (a.load(), -f64::from(a.free_slots())))
    }

    pub fn weighted_capacity(snap: &[AgentView], task: &TaskFacts) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, a) in snap.iter().enumerate() {
            let share = a.weight * f64::from(a.max_concurrency);
            if !a.eligible(task) || share <= 0.0 {
                continue;
            }
            let k = (f64::from(a.in_flight) + 1.0) / share;
            if best.is_none_or(|(_, b)| k < b) {
                best = Some((i, k));
            }
        }
        best.map(|(i, _)| i)
    }

    pub fn weighted_random(snap: &[AgentView], task: &TaskFacts, sample: f64) -> Option<usize> {
        let mut cumulative = Vec::new();
        let mut total = 0.0;
        for (i, a) in snap.iter().enumerate() {
            if a.weight > 0.0 && a.eligible(task) {
                total += a.weight;
                cumulative.push((i, total));
            }
        }
        if total <= 0.0 {
            return None;
        }
        let target = sample.clamp(0.0, 1.0) * total;
        let at = cumulative.partition_point(|&(_, c)| c <= target);
        cumulative.get(at).or(cumulative.last()).map(|&(i, _)| i)
    }

    /// Whether `pick` is what weighted random may choose for `sample`: an
    /// eligible agent of positive weight whose interval of the running total (in
    /// id order) holds `sample × total`, give or take rounding (the snapshot
    /// sums by blocks, in another order than this one-by-one running total).
    pub fn weighted_random_allows(
        snap: &[AgentView],
        task: &TaskFacts,
        sample: f64,
        pick: Option<usize>,
    ) -> bool {
        let Some(p) = pick else {
            return weighted_random(snap, task, sample).is_none();
        };
        if !(snap[p].eligible(task) && snap[p].weight > 0.0) {
            return false;
        }
        let counts = |a: &AgentView| a.weight > 0.0 && a.eligible(task);
        let total: f64 = snap.iter().filter(|a| counts(a)).map(|a| a.weight).sum();
        let before: f64 = snap[..p]
            .iter()
            .filter(|a| counts(a))
            .map(|a| a.weight)
            .sum();
        let target = sample.clamp(0.0, 1.0) * total;
        let slack = 1e-9 * total;
        let last = snap.iter().rposition(counts) == Some(p);
        before - slack <= target && (target < before + snap[p].weight + slack || last)
    }

    pub fn cost_based(snap: &[AgentView], task: &TaskFacts) -> Option<usize> {
        let c = task.hints.estimated_complexity;
        min_by(snap, task, |a| (cost_score(a, c), a.load()))
    }

    pub fn content_based(snap: &[AgentView], task: &TaskFacts, rules: &[Rule]) -> Option<usize> {
        match rules.iter().find(|r| r.matches(task)) {
            Some(rule) => min_by(snap, task, |a| {
                (
                    if rule.target.admits(a) { 0u8 } else { 1 },
                    a.load(),
                    -f64::from(a.free_slots()),
                )
            })
            .filter(|&i| rule.target.admits(&snap[i])),
            None => least_loaded(snap, task),
        }
    }
}

fn arb_tagged_view() -> impl proptest::strategy::Strategy<Value = AgentView> {
    (arb_view(), 0u8..4, 0u8..3).prop_map(|(mut v, tag, ty)| {
        v.tags = match tag {
            0 => vec![],
            1 => vec!["gold".into()],
            2 => vec!["silver".into(), "gold".into()],
            _ => vec!["silver".into()],
        };
        v.agent_type = ["llm", "vision", "tool"][ty as usize].into();
        v
    })
}

proptest! {
    /// The dense copy answers eligibility like the views, after any change made
    /// through the snapshot, for a snapshot of the task's type, of another type
    /// and of none.
    #[test]
    fn dense_eligibility_matches_the_views(
        views in proptest::collection::vec(arb_tagged_view(), 0..20),
        changes in proptest::collection::vec((0usize..20, 0u8..4, 0u32..6), 0..10),
        min_health in 0.0f64..1.0,
    ) {
        for built_for in [None, Some("summarize"), Some("other")] {
            let mut snap = match built_for {
                None => Snapshot::new(views.clone()),
                Some(t) => Snapshot::for_task_type(t, views.clone()),
            };
            for &(pos, kind, n) in &changes {
                if snap.is_empty() {
                    break;
                }
                let pos = pos % snap.len();
                match kind {
                    0 => snap.set_in_flight(pos, n),
                    1 => snap.set_routable(pos, n % 2 == 0),
                    2 => snap.modify_at(pos, |a| {
                        a.max_concurrency = n;
                        a.capabilities = if n % 2 == 0 { vec!["summarize".into()] } else { vec![] };
                        a.tags = vec![format!("t{n}")];
                    }),
                    _ => snap.modify_all(|a| a.health = f64::from(n) / 5.0),
                }
            }
            let mut t = task();
            t.hints.min_health = min_health;
            for i in 0..snap.len() {
                prop_assert_eq!(snap.eligible(i, &t), snap[i].eligible(&t), "{:?} {:?}", built_for, snap[i]);
            }
            prop_assert!(!snap.eligible(snap.len(), &t));
        }
    }

    /// Every scanning strategy picks on the dense copy exactly what it picked
    /// over the views, whether or not the snapshot was built for the task type.
    #[test]
    fn dense_strategies_pick_what_the_view_scans_picked(
        views in proptest::collection::vec(arb_tagged_view(), 0..20),
        sample in 0.0f64..1.0,
        min_health in 0.0f64..1.0,
        complexity in 0.1f64..5.0,
        rule in 0usize..5,
    ) {
        let rules = parse_rules(&[
            ["priority == normal => tag:gold"],
            ["priority == normal => tag:silver"],
            ["priority == normal => type:vision"],
            ["priority == normal => tag:missing"],
            ["priority == high => tag:gold"],
        ][rule]).unwrap();
        let mut t = task();
        t.hints.min_health = min_health;
        t.hints.estimated_complexity = complexity;
        for snap in [Snapshot::new(views.clone()), Snapshot::for_task_type("summarize", views.clone())] {
            let v = snap.agents();
            prop_assert_eq!(least_loaded(&snap, &t), reference::least_loaded(v, &t));
            prop_assert_eq!(weighted_capacity(&snap, &t), reference::weighted_capacity(v, &t));
            let pick = weighted_random(&snap, &t, sample);
            prop_assert!(reference::weighted_random_allows(v, &t, sample, pick), "{:?}", pick);
            prop_assert_eq!(cost_based(&snap, &t), reference::cost_based(v, &t));
            prop_assert_eq!(content_based(&snap, &t, &rules), reference::content_based(v, &t, &rules));
            let every: Vec<usize> = (0..v.len()).filter(|&i| v[i].eligible(&t)).collect();
            prop_assert_eq!(broadcast(&snap, &t), every);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The same on snapshots of many chunks and several of weighted random's
    /// blocks, after changes through the snapshot: every lane, the padding, the
    /// merge of the lanes and the walk of the blocks are exercised.
    #[test]
    fn chunked_scans_pick_what_the_view_scans_picked_on_large_snapshots(
        views in proptest::collection::vec(arb_tagged_view(), 0..300),
        changes in proptest::collection::vec((0usize..300, 0u8..2, 0u32..6), 0..20),
        samples in proptest::collection::vec(0.0f64..1.0, 4),
        min_health in 0.0f64..1.0,
        complexity in 0.1f64..5.0,
        rule in 0usize..3,
    ) {
        // Ids by position, so that the snapshot keeps them all.
        let views: Vec<AgentView> = views
            .into_iter()
            .enumerate()
            .map(|(i, v)| AgentView { agent_id: id(&format!("agent-{i:03}")), ..v })
            .collect();
        let rules = parse_rules(&[
            ["priority == normal => tag:gold"],
            ["priority == normal => type:vision"],
            ["priority == high => tag:gold"],
        ][rule]).unwrap();
        let mut t = task();
        t.hints.min_health = min_health;
        t.hints.estimated_complexity = complexity;
        for mut snap in [Snapshot::new(views.clone()), Snapshot::for_task_type("summarize", views.clone())] {
            for &(pos, kind, n) in &changes {
                if snap.is_empty() {
                    break;
                }
                let pos = pos % snap.len();
                match kind {
                    0 => snap.set_in_flight(pos, n),
                    _ => snap.set_routable(pos, n % 2 == 0),
                }
            }
            let v = snap.agents();
            prop_assert_eq!(least_loaded(&snap, &t), reference::least_loaded(v, &t));
            prop_assert_eq!(weighted_capacity(&snap, &t), reference::weighted_capacity(v, &t));
            for &sample in &samples {
                let pick = weighted_random(&snap, &t, sample);
                prop_assert!(reference::weighted_random_allows(v, &t, sample, pick), "{:?}", pick);
            }
            prop_assert_eq!(cost_based(&snap, &t), reference::cost_based(v, &t));
            prop_assert_eq!(content_based(&snap, &t, &rules), reference::content_based(v, &t, &rules));
            let every: Vec<usize> = (0..v.len()).filter(|&i| v[i].eligible(&t)).collect();
            prop_assert_eq!(broadcast(&snap, &t), every);
        }
    }
}

#[test]
fn weighted_random_walks_only_the_block_holding_the_target() {
    // 200 agents of weight 1 over four blocks: the sample picks its agent in
    // id order, and the very end of the total is the last agent's.
    let snap = Snapshot::for_task_type(
        "summarize",
        (0..200).map(|i| agent(&format!("a{i:03}"), 0, 1)).collect(),
    );
    for (sample, want) in [(0.0, 0), (0.5, 100), (0.704, 140), (0.999, 199), (1.0, 199)] {
        assert_eq!(
            weighted_random(&snap, &task(), sample),
            Some(want),
            "{sample}"
        );
    }
}

#[test]
fn content_rules_on_a_tag_beyond_the_first_sixty_four_still_match() {
    // Tags past the 64 that fit an agent's bit set fall back to the string test.
    let views: Vec<AgentView> = (0..70)
        .map(|i| AgentView {
            tags: vec![format!("tag-{i:02}")],
            ..agent(&format!("a{i:02}"), 0, 4)
        })
        .collect();
    let snap = Snapshot::for_task_type("summarize", views);
    for target in ["tag-03", "tag-68"] {
        let rules = parse_rules(&[format!("* => tag:{target}")]).unwrap();
        let pick = content_based(&snap, &task(), &rules).unwrap();
        assert_eq!(snap[pick].tags, [target]);
    }
}

#[test]
fn a_snapshot_for_one_type_still_routes_tasks_of_another() {
    let mut other = agent("b", 0, 4);
    other.capabilities = vec!["translate".into()];
    let snap = Snapshot::for_task_type("summarize", vec![agent("a", 0, 4), other]);
    assert_eq!(snap.task_type(), Some("summarize"));
    let mut t = task();
    t.task_type = "translate";
    assert_eq!(least_loaded(&snap, &t), Some(1));
    assert_eq!(least_loaded(&snap, &task()), Some(0));
}
