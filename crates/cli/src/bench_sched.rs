//! `baton bench --scenarios routing,discovery`: the scheduler's pure core at the
//! issue's scale, in process, on one thread, with no server and no network. It
//! builds a [`Registry`] of a synthetic fleet (10,000 agents over 60 agent types by
//! default, each type serving its own task type; uneven type sizes, capacities,
//! loads, weights, cost factors, tags, locations and versions; some agents
//! unhealthy, full or with an open breaker), a [`Router`] per task type kept in
//! step with registrations, and times each routing decision of all ten
//! strategies and each discovery query with an HDR histogram.
//!
//! Routing is timed two ways: the decision alone, on a snapshot of the task
//! type's agents built beforehand (what a server that keeps one snapshot per task
//! type and updates it in place pays), and the snapshot build alone (collect the
//! views of the type's agents from the registry, sort, mark open breakers), which
//! a server that rebuilds per decision pays on top. A last set of rows routes a
//! task type that every agent serves (a 10,000-agent snapshot), the worst case.
//! In-flight counts are not updated between decisions.

use anyhow::{bail, Result};
use baton_core::sched::breaker::{self, Breakers};
use baton_core::sched::hints::TaskFacts;
use baton_core::sched::registry::{
    self, parse_version, parse_version_req, Descriptor, HeartbeatLoad, Query, Registry,
};
use baton_core::sched::routing::{parse_rules, HashRing, Router, Snapshot, Strategy};
use baton_core::sched::Hints;
use baton_core::{AgentId, Millis, Priority};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::time::Instant;

/// The scenarios this module runs; `bench::run` hands them over.
pub const SCENARIOS: [&str; 2] = ["routing", "discovery"];

/// The targets.
const ROUTING_TARGET_US: f64 = 50.0;
const DISCOVERY_TARGET_US: f64 = 1_000.0;

/// A task type every agent serves: the worst case for routing and discovery.
const EVERY_AGENT: &str = "ping";

const REGIONS: [&str; 8] = [
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-south-1",
    "ap-northeast-1",
    "sa-east-1",
    "ca-central-1",
];
const TAGS: [&str; 10] = [
    "prod",
    "staging",
    "gpu",
    "cpu",
    "spot",
    "on-demand",
    "eu-data",
    "pci",
    "batch",
    "interactive",
];
const SERVICE_TYPES: [&str; 5] = [
    "computation",
    "storage",
    "communication",
    "analytics",
    "integration",
];
const N_SKILLS: usize = 40;
const CONCURRENCIES: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];
const WEIGHTS: [f64; 6] = [0.0, 0.5, 1.0, 1.0, 2.0, 4.0];
const VERSION_REQS: [&str; 6] = [">=1.2, <3", "^2", ">=1.0.0", "~1.4", "<2.5", "^3.1"];

/// Options of the routing and discovery scenarios.
#[derive(Args, Clone, Debug)]
pub struct SchedArgs {
    /// routing, discovery: agents in the registry.
    #[arg(long, default_value_t = 10_000)]
    sched_agents: usize,
    /// routing, discovery: agent types, each serving a task type of its own.
    #[arg(long, default_value_t = 60)]
    sched_types: usize,
    /// routing: decisions timed per strategy (a tenth of it on the every-agent type).
    #[arg(long, default_value_t = 100_000)]
    decisions: usize,
    /// discovery: queries timed per kind of query.
    #[arg(long, default_value_t = 20_000)]
    queries: usize,
    /// routing, discovery: seed of the synthetic fleet and tasks.
    #[arg(long, default_value_t = 4)]
    sched_seed: u64,
    /// routing, discovery: print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
}

/// SplitMix64: deterministic, so a seed gives the same fleet on every run.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// The registry and what a server keeps beside it.
struct Fleet {
    registry: Registry,
    breakers: Breakers,
    /// Task type → the agents serving it, kept in step with registrations.
    serving: BTreeMap<String, Vec<AgentId>>,
    routers: BTreeMap<String, Router>,
    /// Each agent's own task type, to draw tasks in proportion to type sizes.
    primary: Vec<String>,
    /// Time of `on_register` into a task type's ring, per registration.
    on_register: Histogram<u64>,
    largest_ring: usize,
    n_unhealthy: usize,
    n_breaker_open: usize,
    n_full: usize,
    now: Millis,
}

fn task_type_name(i: usize) -> String {
    format!("task-{i:02}")
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn agent_id(i: usize) -> AgentId {
    AgentId::from_trusted(format!("agent-{i:05}"))
}

impl Fleet {
    fn build(n_agents: usize, n_types: usize, rng: &mut Rng) -> Result<Fleet> {
        if n_agents == 0 || n_types == 0 {
            bail!("--sched-agents and --sched-types must be at least 1");
        }
        let now: Millis = 1_000_000_000;
        let mut registry = Registry::new(registry::Options::default())?;
        let mut breakers = Breakers::new(breaker::Options::default())?;
        // Uneven type sizes: type i gets a share proportional to (i + 1)^-0.8.
        let shares: Vec<f64> = (0..n_types).map(|i| (i as f64 + 1.0).powf(-0.8)).collect();
        let total: f64 = shares.iter().sum();
        let mut cumulative = Vec::with_capacity(n_types);
        let mut acc = 0.0;
        for s in &shares {
            acc += s / total;
            cumulative.push(acc);
        }
        let mut serving: BTreeMap<String, Vec<AgentId>> = BTreeMap::new();
        let mut primary = Vec::with_capacity(n_agents);
        let (mut n_unhealthy, mut n_breaker_open, mut n_full) = (0, 0, 0);
        for i in 0..n_agents {
            let at = (i as f64 + 0.5) / n_agents as f64;
            let kind = cumulative
                .iter()
                .position(|&c| at < c)
                .unwrap_or(n_types - 1);
            let id = agent_id(i);
            let own = task_type_name(kind);
            let version = parse_version(&format!(
                "{}.{}.{}",
                1 + rng.below(3),
                rng.below(10),
                rng.below(20)
            ))?;
            let max_concurrency = *rng.pick(&CONCURRENCIES);
            let mut d = Descriptor::new(
                id.clone(),
                format!("agenttype-{kind:02}"),
                version,
                max_concurrency,
            );
            let mut tasks = vec![own.clone(), EVERY_AGENT.to_string()];
            if rng.chance(0.3) {
                let other = task_type_name(rng.below(n_types));
                if other != own {
                    tasks.push(other);
                }
            }
            d.capabilities = tasks.iter().cloned().collect();
            for _ in 0..1 + rng.below(3) {
                d.capabilities
                    .insert(format!("skill-{:02}", rng.below(N_SKILLS)));
            }
            d.service_types = BTreeSet::from([rng.pick(&SERVICE_TYPES).to_string()]);
            d.endpoint = format!(
                "tcp://10.{}.{}.{}:5000",
                i / 65_536,
                (i / 256) % 256,
                i % 256
            );
            if rng.chance(0.7) {
                d.tags.insert("prod".into());
            }
            for _ in 0..rng.below(3) {
                d.tags.insert(rng.pick(&TAGS).to_string());
            }
            d.location = (!rng.chance(0.05)).then(|| rng.pick(&REGIONS).to_string());
            d.cost_factor = (rng.range(0.1, 5.0) * 100.0).round() / 100.0;
            d.weight = *rng.pick(&WEIGHTS);
            registry.register(d, now - rng.below(600_000) as u64)?;

            // Load: most agents healthy, 5 % unhealthy (health under the default
            // min_health of 0.5), 5 % late with their heartbeats.
            let unhealthy = rng.chance(0.05);
            n_unhealthy += usize::from(unhealthy);
            let load = HeartbeatLoad {
                cpu_usage: rng.unit(),
                error_rate: if unhealthy {
                    rng.range(0.55, 0.95)
                } else if rng.chance(0.1) {
                    rng.range(0.03, 0.2)
                } else {
                    rng.range(0.0, 0.03)
                },
                response_time_ms: if rng.chance(0.05) {
                    rng.range(1_000.0, 4_000.0)
                } else {
                    rng.range(50.0, 800.0)
                },
            };
            let last_heartbeat = if rng.chance(0.05) {
                now - 60_000 - rng.below(140_000) as u64
            } else {
                now - rng.below(30_000) as u64
            };
            registry.heartbeat(&id, load, last_heartbeat)?;
            let in_flight = if rng.chance(0.1) {
                n_full += 1;
                max_concurrency
            } else {
                rng.below(max_concurrency as usize + 1) as u32
            };
            registry.set_in_flight(&id, in_flight);
            if rng.chance(0.9) {
                registry.record_duration(&id, 100 + rng.below(10_000) as u64);
            }
            if rng.chance(0.03) {
                n_breaker_open += 1;
                let opened = now - rng.below(50_000) as u64;
                for _ in 0..breakers.options().failure_threshold {
                    breakers.record(&id, breaker::Outcome::Failure, opened);
                }
            }
            for t in tasks {
                serving.entry(t).or_default().push(id.clone());
            }
            primary.push(own);
        }

        // One router per task type, in step with registrations. The every-agent
        // type's ring is built in one go: `on_register` rebuilds the whole ring, and
        // 10,000 of them one by one would take minutes.
        let mut routers = BTreeMap::new();
        let mut on_register = histogram();
        let mut largest_ring = 0;
        for (task_type, ids) in &serving {
            let mut router = Router::default();
            if task_type == EVERY_AGENT {
                router.ring =
                    HashRing::with_members(baton_core::sched::routing::ring::DEFAULT_VNODES, ids);
            } else {
                largest_ring = largest_ring.max(ids.len());
                for id in ids {
                    let start = Instant::now();
                    router.on_register(id);
                    on_register.record(elapsed_ns(start))?;
                }
            }
            router.rules = parse_rules(&content_rules(task_type, rng.below(n_types)))?;
            router.failover = (0..8).map(|_| rng.pick(ids).clone()).collect();
            routers.insert(task_type.clone(), router);
        }
        Ok(Fleet {
            registry,
            breakers,
            serving,
            routers,
            primary,
            on_register,
            largest_ring,
            n_unhealthy,
            n_breaker_open,
            n_full,
            now,
        })
    }

    /// The snapshot a server builds for one task type: the views of the agents
    /// serving it, sorted by id, with open breakers marked not routable.
    fn snapshot(&self, task_type: &str) -> Snapshot {
        let opts = self.registry.options();
        let views = self.serving[task_type]
            .iter()
            .filter_map(|id| self.registry.get(id))
            .map(|a| a.view(opts, self.now))
            .collect();
        let mut snap = Snapshot::for_task_type(task_type, views);
        self.breakers.exclude_open(&mut snap, self.now);
        snap
    }
}

/// Content rules of a task type: a few conditions on metadata and priority
/// sending work to a tag or an agent type, then a catch-all to `prod`.
fn content_rules(task_type: &str, other_kind: usize) -> Vec<String> {
    vec![
        "metadata.region == eu and priority in high,critical => tag:eu-data".into(),
        "metadata.gpu == true => tag:gpu".into(),
        format!("metadata.tenant in t-1,t-2,t-3,t-4 => type:agenttype-{other_kind:02}"),
        format!("task_type == {task_type} and metadata.size exists and priority != background => tag:on-demand"),
        "* => tag:prod".into(),
    ]
}

fn elapsed_ns(start: Instant) -> u64 {
    (start.elapsed().as_nanos() as u64).max(1)
}

/// A task to route: owned, so that building its [`TaskFacts`] borrows it.
struct Task {
    task_type: String,
    priority: Priority,
    metadata: Map<String, Value>,
    hints: Hints,
}

impl Task {
    fn facts(&self) -> TaskFacts<'_> {
        TaskFacts {
            task_type: &self.task_type,
            priority: self.priority,
            metadata: &self.metadata,
            hints: self.hints.clone(),
        }
    }
}

fn tasks(fleet: &Fleet, n: usize, every_agent: bool, rng: &mut Rng) -> Vec<Task> {
    (0..n)
        .map(|_| {
            // In proportion to type sizes: the type of a random agent.
            let task_type = if every_agent {
                EVERY_AGENT.to_string()
            } else {
                rng.pick(&fleet.primary).clone()
            };
            let mut metadata = Map::new();
            metadata.insert("tenant".into(), format!("t-{}", rng.below(200)).into());
            metadata.insert("region".into(), (*rng.pick(&["eu", "us", "ap"])).into());
            metadata.insert("gpu".into(), rng.chance(0.1).into());
            if rng.chance(0.5) {
                metadata.insert("size".into(), (1 + rng.below(1_000)).into());
            }
            let serving = &fleet.serving[&task_type];
            let hints = Hints {
                routing_key: rng
                    .chance(0.9)
                    .then(|| format!("key-{}", rng.below(20_000))),
                preferred_agents: if rng.chance(0.2) {
                    (0..3).map(|_| rng.pick(serving).clone()).collect()
                } else {
                    Vec::new()
                },
                estimated_complexity: rng.range(0.5, 3.0),
                min_health: if rng.chance(0.2) { 0.8 } else { 0.5 },
                ..Hints::default()
            };
            Task {
                task_type,
                priority: *rng.pick(&Priority::ALL),
                metadata,
                hints,
            }
        })
        .collect()
}

/// One line of results.
struct Row {
    section: &'static str,
    name: String,
    scope: &'static str,
    hist: Histogram<u64>,
    target_us: Option<f64>,
    note: String,
}

impl Row {
    fn us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1_000.0
    }

    fn max_us(&self) -> f64 {
        self.hist.max() as f64 / 1_000.0
    }

    fn met(&self) -> Option<bool> {
        self.target_us.map(|t| self.us(0.99) <= t)
    }

    fn to_json(&self) -> Value {
        json!({
            "section": self.section,
            "name": self.name,
            "scope": self.scope,
            "count": self.hist.len(),
            "p50_us": self.us(0.50),
            "p99_us": self.us(0.99),
            "p999_us": self.us(0.999),
            "max_us": self.max_us(),
            "mean_us": self.hist.mean() / 1_000.0,
            "target_p99_us": self.target_us,
            "met": self.met(),
            "note": self.note,
        })
    }
}

/// Times `decisions` routing decisions of `strategy` over prebuilt snapshots;
/// checks outside the timed part that every pick is eligible.
fn time_strategy(
    fleet: &mut Fleet,
    snapshots: &BTreeMap<String, Snapshot>,
    tasks: &[Task],
    strategy: Strategy,
    decisions: usize,
    rng: &mut Rng,
) -> Result<(Histogram<u64>, usize, usize)> {
    let mut hist = histogram();
    let (mut n_routed, mut n_picked) = (0, 0);
    let now = fleet.now;
    for i in 0..decisions {
        let task = &tasks[i % tasks.len()];
        let snap = &snapshots[&task.task_type];
        let router = fleet
            .routers
            .get_mut(&task.task_type)
            .expect("a router per task type");
        let facts = task.facts();
        let sample = rng.unit();
        let start = Instant::now();
        let picked = black_box(router.route(strategy, snap, &facts, sample, now));
        hist.record(elapsed_ns(start))?;
        if let Some(&bad) = picked.iter().find(|&&p| !snap[p].eligible(&facts)) {
            bail!(
                "{strategy} picked ineligible agent {} for a {} task",
                snap[bad].agent_id,
                task.task_type
            );
        }
        n_routed += usize::from(!picked.is_empty());
        n_picked += picked.len();
    }
    Ok((hist, n_routed, n_picked))
}

fn routing(fleet: &mut Fleet, args: &SchedArgs, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mixed = tasks(fleet, 8_192, false, rng);
    let every = tasks(fleet, 1_024, true, rng);
    let snapshots: BTreeMap<String, Snapshot> = fleet
        .serving
        .keys()
        .map(|t| (t.clone(), fleet.snapshot(t)))
        .collect();
    for (scope, pool, decisions) in [
        ("mixed", &mixed, args.decisions),
        ("every_agent", &every, (args.decisions / 10).max(1)),
    ] {
        // Warm-up, not counted: caches, the affinity map, allocator.
        for strategy in Strategy::ALL {
            time_strategy(fleet, &snapshots, pool, strategy, 1_000.min(decisions), rng)?;
        }
        for strategy in Strategy::ALL {
            let (hist, n_routed, n_picked) =
                time_strategy(fleet, &snapshots, pool, strategy, decisions, rng)?;
            let note = if strategy == Strategy::Broadcast {
                format!(
                    "{:.1} % routed, {:.0} agents per broadcast",
                    100.0 * n_routed as f64 / decisions as f64,
                    n_picked as f64 / decisions as f64
                )
            } else {
                format!("{:.1} % routed", 100.0 * n_routed as f64 / decisions as f64)
            };
            rows.push(Row {
                section: "routing",
                name: strategy.as_str().to_string(),
                scope,
                hist,
                target_us: Some(ROUTING_TARGET_US),
                note,
            });
        }
    }
    // Snapshot building, which a server that rebuilds per decision adds to each.
    for (scope, pool, n) in [
        ("mixed", &mixed, (args.decisions / 10).max(1)),
        ("every_agent", &every, (args.decisions / 100).max(1)),
    ] {
        let mut hist = histogram();
        for i in 0..n {
            let task_type = &pool[i % pool.len()].task_type;
            let start = Instant::now();
            let snap = black_box(fleet.snapshot(task_type));
            hist.record(elapsed_ns(start))?;
            drop(snap);
        }
        let sizes: Vec<usize> = pool
            .iter()
            .map(|t| fleet.serving[&t.task_type].len())
            .collect();
        rows.push(Row {
            section: "snapshot",
            name: "snapshot_build".into(),
            scope,
            hist,
            target_us: None,
            note: format!(
                "registry views of the type's agents, sorted, breakers marked; {:.0} agents on average",
                sizes.iter().sum::<usize>() as f64 / sizes.len() as f64
            ),
        });
    }
    rows.push(Row {
        section: "registration",
        name: "router_on_register".into(),
        scope: "mixed",
        hist: fleet.on_register.clone(),
        target_us: None,
        note: format!(
            "adding one agent to its task type's hash ring (rebuilt whole); largest ring {} agents",
            fleet.largest_ring
        ),
    });
    Ok(rows)
}

fn queries(fleet: &Fleet, n: usize, every_agent: bool, rng: &mut Rng) -> Result<Vec<Query>> {
    (0..n)
        .map(|_| {
            let mut capabilities = vec![if every_agent {
                EVERY_AGENT.to_string()
            } else {
                rng.pick(&fleet.primary).clone()
            }];
            if !every_agent && rng.chance(0.5) {
                capabilities.push(format!("skill-{:02}", rng.below(N_SKILLS)));
            }
            Ok(Query {
                capabilities,
                min_health: 0.8,
                version: Some(parse_version_req(
                    VERSION_REQS[rng.below(VERSION_REQS.len())],
                )?),
                location: Some(rng.pick(&REGIONS).to_string()),
                ..Query::default()
            })
        })
        .collect()
}

fn discovery(fleet: &Fleet, args: &SchedArgs, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (scope, every_agent, n) in [
        ("mixed", false, args.queries),
        ("every_agent", true, (args.queries / 10).max(1)),
    ] {
        let qs = queries(fleet, 1_024, every_agent, rng)?;
        for q in qs.iter().take(200) {
            black_box(fleet.registry.discover(q, fleet.now));
        }
        let mut hist = histogram();
        let mut n_found = 0;
        for i in 0..n {
            let q = &qs[i % qs.len()];
            let start = Instant::now();
            let found = black_box(fleet.registry.discover(q, fleet.now));
            hist.record(elapsed_ns(start))?;
            n_found += found.len();
        }
        rows.push(Row {
            section: "discovery",
            name: if every_agent {
                "capability every agent has + min_health 0.8 + version range + location".into()
            } else {
                "task type (+ a skill half the time) + min_health 0.8 + version range + location"
                    .into()
            },
            scope,
            hist,
            target_us: Some(DISCOVERY_TARGET_US),
            note: format!(
                "{:.0} agents returned on average",
                n_found as f64 / n as f64
            ),
        });
    }
    Ok(rows)
}

fn fmt_us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<12} {:<18} {:<11} {:>7} {:>8} {:>8} {:>8} {:>8}  {:<18} note",
        "section", "name", "scope", "count", "p50 µs", "p99 µs", "p999 µs", "max µs", "target p99"
    );
    for r in rows {
        let target = match (r.target_us, r.met()) {
            (Some(t), Some(true)) => format!("≤ {t:.0} µs met"),
            (Some(t), _) => format!("≤ {t:.0} µs MISSED"),
            (None, _) => "-".into(),
        };
        let name = if r.section == "discovery" {
            "discover"
        } else {
            r.name.as_str()
        };
        println!(
            "{:<12} {:<18} {:<11} {:>7} {:>8} {:>8} {:>8} {:>8}  {:<18} {}",
            r.section,
            name,
            r.scope,
            r.hist.len(),
            fmt_us(r.us(0.50)),
            fmt_us(r.us(0.99)),
            fmt_us(r.us(0.999)),
            fmt_us(r.max_us()),
            target,
            if r.section == "discovery" {
                format!("{}; {}", r.name, r.note)
            } else {
                r.note.clone()
            }
        );
    }
}

/// Runs the requested ones of [`SCENARIOS`].
pub fn run(scenarios: &[String], args: &SchedArgs) -> Result<()> {
    let mut rng = Rng(args.sched_seed);
    let built = Instant::now();
    let mut fleet = Fleet::build(args.sched_agents, args.sched_types, &mut rng)?;
    let build_s = built.elapsed().as_secs_f64();
    let type_sizes: Vec<usize> = (0..args.sched_types)
        .filter_map(|i| fleet.serving.get(&task_type_name(i)).map(Vec::len))
        .collect();
    let fleet_json = json!({
        "agents": fleet.registry.len(),
        "agent_types": args.sched_types,
        "task_types": fleet.serving.len(),
        "agents_per_task_type_min": type_sizes.iter().min(),
        "agents_per_task_type_max": type_sizes.iter().max(),
        "every_agent_task_type": EVERY_AGENT,
        "unhealthy": fleet.n_unhealthy,
        "breaker_open": fleet.n_breaker_open,
        "full": fleet.n_full,
        "seed": args.sched_seed,
        "build_s": build_s,
    });
    let mut rows = Vec::new();
    if scenarios.iter().any(|s| s == "routing") {
        rows.extend(routing(&mut fleet, args, &mut rng)?);
    }
    if scenarios.iter().any(|s| s == "discovery") {
        rows.extend(discovery(&fleet, args, &mut rng)?);
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    if args.json {
        let doc = json!({
            "baton_version": env!("CARGO_PKG_VERSION"),
            "build": build,
            "cpus": cpus,
            "fleet": fleet_json,
            "timing": "one thread, in process; routing rows time the decision alone on a snapshot built beforehand, snapshot rows time building one",
            "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "# baton {} scheduler bench ({build} build, {cpus} cpus, one thread, in process)",
            env!("CARGO_PKG_VERSION")
        );
        println!(
            "# fleet: {} agents, {} agent types each with its own task type ({}..{} agents per type) plus `{EVERY_AGENT}` served by all; {} unhealthy, {} breaker-open, {} full; built in {build_s:.1} s",
            fleet.registry.len(),
            args.sched_types,
            type_sizes.iter().min().unwrap_or(&0),
            type_sizes.iter().max().unwrap_or(&0),
            fleet.n_unhealthy,
            fleet.n_breaker_open,
            fleet.n_full,
        );
        println!("# routing rows: the decision alone, on the task type's snapshot built beforehand (snapshot_build rows: what building one costs); scope mixed = tasks drawn in proportion to type sizes, every_agent = a type all agents serve");
        print_table(&rows);
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; measure with a release build");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_has_every_kind_of_agent_and_each_type_a_router() {
        let mut rng = Rng(1);
        let fleet = Fleet::build(2_000, 50, &mut rng).unwrap();
        assert_eq!(fleet.registry.len(), 2_000);
        // 50 task types of their own plus the one every agent serves.
        assert_eq!(fleet.serving.len(), 51);
        assert_eq!(fleet.routers.len(), 51);
        assert_eq!(fleet.serving[EVERY_AGENT].len(), 2_000);
        assert!(fleet.n_unhealthy > 0 && fleet.n_breaker_open > 0 && fleet.n_full > 0);
        for (task_type, ids) in &fleet.serving {
            assert_eq!(
                fleet.routers[task_type].ring.len(),
                ids.len(),
                "{task_type}"
            );
        }
        let snap = fleet.snapshot(EVERY_AGENT);
        assert_eq!(snap.len(), 2_000);
        let closed = snap.iter().filter(|a| !a.routable).count();
        assert_eq!(closed, fleet.n_breaker_open);
    }

    #[test]
    fn a_small_run_routes_only_to_eligible_agents() {
        // `time_strategy` refuses a run in which any pick is ineligible.
        let args = SchedArgs {
            sched_agents: 500,
            sched_types: 50,
            decisions: 300,
            queries: 50,
            sched_seed: 9,
            json: true,
        };
        let mut rng = Rng(args.sched_seed);
        let mut fleet = Fleet::build(args.sched_agents, args.sched_types, &mut rng).unwrap();
        let rows = routing(&mut fleet, &args, &mut rng).unwrap();
        // Ten strategies in two scopes, two snapshot rows, one registration row.
        assert_eq!(rows.len(), 23);
        let rows = discovery(&fleet, &args, &mut rng).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| !r.hist.is_empty()));
    }
}
