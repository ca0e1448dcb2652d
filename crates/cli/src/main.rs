//! `baton`: the orchestrator (`serve`, `dev`), built-in agents (`agent`), a client
//! for people and scripts (`submit`, `get`, `watch`, `list`, `cancel`, `dlq`, `agents`, `sla`,
//! `flows`, `runs`) and the load generator (`bench`).

mod bench;
mod bench_sched;
mod client;
mod output;
mod runs;
mod serve;
mod telemetry;
mod watch;

use clap::{Parser, Subcommand};

// The server allocates and frees many small, short-lived values per task (JSON
// documents, records, frames) across threads; glibc's malloc spent about a third
// of the server's CPU on them under load (consolidating and unlinking chunks).
// Built with `no_thp` (Cargo.toml): mimalloc's huge-page advice made the kernel
// zero a fresh 2 MiB page each time purged memory was touched again. On hosts
// whose transparent huge pages are `always` (not `madvise`), `main` turns them
// off for the process and its children (the agents it starts) as well.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Why transparent huge pages could not be turned off, if they could not.
static THP_OFF_ERROR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton: a fast, durable orchestrator for AI-agent workloads"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the orchestrator (REST, gRPC, embedded store).
    Serve(serve::ServeArgs),
    /// Run the orchestrator and the built-in agents in one process (the quick start).
    Dev(serve::DevArgs),
    /// Run built-in agents that connect to an orchestrator.
    Agent(serve::AgentArgs),
    /// Submit tasks (from flags or a JSON file); --wait prints results.
    Submit(output::SubmitArgs),
    /// Show one task.
    Get(output::GetArgs),
    /// Follow a running task: its status changes and the events its agents emit
    /// (alerts, LLM tokens, ...) as they happen, then the task.
    Watch(watch::WatchArgs),
    /// List tasks.
    List(output::ListArgs),
    /// Cancel a task.
    Cancel(output::CancelArgs),
    /// The dead-letter queue.
    Dlq {
        #[command(subcommand)]
        cmd: output::DlqCmd,
    },
    /// Connected agents; with filters, discovery by capability, health, version and location.
    Agents(output::AgentsArgs),
    /// The scheduler's state: queues, keys, agents' load and breakers, shedding.
    Scheduler(output::ClientArgs),
    /// The SLA view: latency percentiles, throughput and error rate against targets.
    Sla(output::ClientArgs),
    /// The flow registry: register, list and show flow definitions.
    Flows {
        #[command(subcommand)]
        cmd: runs::FlowsCmd,
    },
    /// Workflow runs: start, get, list, cancel, pause, resume, retry, watch.
    Runs {
        #[command(subcommand)]
        cmd: runs::RunsCmd,
    },
    /// Load generator: end-to-end throughput and latency against a server.
    Bench(bench::BenchArgs),
    /// Write seed 000's sample inputs (sales CSV, PNG chart, animated GIF of a scene,
    /// and the request bodies of both use cases) into a directory.
    Samples {
        /// Where to write them (created if needed).
        #[arg(default_value = "samples")]
        dir: std::path::PathBuf,
    },
}

fn write_samples(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, bytes) in baton_agents::samples::files() {
        let path = dir.join(name);
        std::fs::write(&path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
    Ok(())
}

fn main() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // Only slower, never wrong: the long-running commands log it once
        // their logging is set up (`serve::init_logging`).
        let _ = THP_OFF_ERROR.set(e.to_string());
    }
    let cli = Cli::parse();
    // The orchestrator's config is read before the runtime is built: it says
    // how many threads the runtime gets.
    let loaded = match &cli.cmd {
        Cmd::Serve(a) => a.load().map(Some),
        Cmd::Dev(a) => a.load().map(Some),
        _ => Ok(None),
    };
    let mut config = loaded.unwrap_or_else(|e| fail(e));
    let configured = match (&cli.cmd, &config) {
        (_, Some(cfg)) => cfg.worker_threads,
        (Cmd::Agent(a), None) => usize::from(a.worker_threads),
        _ => 0,
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(baton_server::config::runtime_workers(configured, cpus))
        .enable_all()
        .build()
        .expect("tokio runtime");
    // The command runs as a task on the runtime's workers, not on this thread
    // (`block_on` polls its future here): a long-running loop such as an
    // agent's then hands its messages to and from the other tasks without a
    // thread switch each way.
    let command = runtime.spawn(async move {
        match cli.cmd {
            Cmd::Serve(_) => serve::serve(config.take().expect("loaded above")).await,
            Cmd::Dev(a) => serve::dev(config.take().expect("loaded above"), a).await,
            Cmd::Agent(a) => serve::agent(a).await,
            Cmd::Submit(a) => output::submit(a).await,
            Cmd::Get(a) => output::get(a).await,
            Cmd::Watch(a) => watch::watch(a).await,
            Cmd::List(a) => output::list(a).await,
            Cmd::Cancel(a) => output::cancel(a).await,
            Cmd::Dlq { cmd } => output::dlq(cmd).await,
            Cmd::Agents(a) => output::agents(a).await,
            Cmd::Scheduler(a) => output::scheduler(a).await,
            Cmd::Sla(a) => output::sla(a).await,
            Cmd::Flows { cmd } => runs::flows(cmd).await,
            Cmd::Runs { cmd } => runs::runs(cmd).await,
            Cmd::Bench(a) => bench::run(a).await,
            Cmd::Samples { dir } => write_samples(&dir),
        }
    });
    let result = runtime
        .block_on(command)
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the command stopped: {e}")));
    if let Err(e) = result {
        fail(e);
    }
}

fn fail(e: anyhow::Error) -> ! {
    eprintln!("error: {e:#}");
    std::process::exit(1);
}
