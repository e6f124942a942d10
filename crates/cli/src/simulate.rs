//! `dialstack simulate`: the pacing benchmark of issue 11. Runs the
//! simulator of `task_scheduler::domain::pacing::sim` over a matrix of
//! campaigns (agents × answer rate × talk time), each with VICIdial's
//! adaptive pacer and dialstack's predictive pacer on the same seeded
//! trace, and prints a Markdown table.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use task_scheduler::domain::pacing::{
    simulate, DropMethod, Predictive, SimConfig, SimReport, Vicidial, VicidialConfig,
};

/// `dialstack simulate` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Simulated shift length (hours; the shift starts at 09:00).
    #[arg(long, default_value_t = 8.0)]
    hours: f64,
    /// Seed of the lead traces.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Agent counts.
    #[arg(long, value_delimiter = ',', default_value = "10,50,200")]
    agents: Vec<u32>,
    /// Answer rates (% of calls answered by a person, at mid-shift).
    #[arg(long, value_delimiter = ',', default_value = "15,30,60")]
    answer_pct: Vec<f64>,
    /// Mean talk times (s, at mid-shift).
    #[arg(long, value_delimiter = ',', default_value = "60,180")]
    talk_s: Vec<f64>,
    /// Mean wrap-up time (s).
    #[arg(long, default_value_t = 20.0)]
    wrap_s: f64,
    /// dialstack's abandon cap (%).
    #[arg(long, default_value_t = 3.0)]
    cap_pct: f64,
    /// VICIdial's drop limit (%), kept apart from `--cap-pct` so that a run
    /// can let dialstack abandon as much as VICIdial does.
    #[arg(long, default_value_t = 3.0)]
    baseline_drop_limit_pct: f64,
    /// VICIdial's drop method: `tapered` (the baseline),
    /// `average` or `hard-limit` (the strictest: level 1.0 while today's
    /// drops are over the limit).
    #[arg(long, value_enum, default_value_t = BaselineDropMethod::Tapered)]
    baseline_drop_method: BaselineDropMethod,
    /// VICIdial's difference target τ (0; −1 aims at one idle agent).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    baseline_difference_target: f64,
    /// Occupancy gain over the baseline that counts as met (points).
    #[arg(long, default_value_t = 10.0)]
    target_points: f64,
    /// Traces simulated at once.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
}

/// VICIdial's drop methods, as options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BaselineDropMethod {
    /// Level × min(1, (21:00 − now as HHMM) / 1000).
    Tapered,
    /// Level halved.
    Average,
    /// Level 1.0.
    HardLimit,
}

impl From<BaselineDropMethod> for DropMethod {
    fn from(m: BaselineDropMethod) -> Self {
        match m {
            BaselineDropMethod::Tapered => DropMethod::Tapered,
            BaselineDropMethod::Average => DropMethod::Average,
            BaselineDropMethod::HardLimit => DropMethod::HardLimit,
        }
    }
}

/// One row of the table.
struct Row {
    cfg: SimConfig,
    vicidial: SimReport,
    predictive: SimReport,
}

/// Runs the matrix and prints the table; fails if the arguments are
/// unusable, not if a target is missed.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.hours > 0.0 && args.hours <= 24.0,
        "--hours must be in (0, 24]"
    );
    anyhow::ensure!(
        args.answer_pct.iter().all(|p| *p > 0.0 && *p <= 100.0),
        "--answer-pct values must be in (0, 100]"
    );
    anyhow::ensure!(
        args.baseline_difference_target.is_finite()
            && (-100.0..=100.0).contains(&args.baseline_difference_target),
        "--baseline-difference-target must be in [-100, 100]"
    );
    anyhow::ensure!(
        args.talk_s.iter().all(|t| *t > 0.0) && args.wrap_s >= 0.0,
        "--talk-s must be positive and --wrap-s not negative"
    );
    tokio::task::spawn_blocking(move || run_matrix(&args))
        .await
        .context("simulation thread")?
}

fn run_matrix(args: &SimulateArgs) -> anyhow::Result<()> {
    let mut configs = Vec::new();
    for &agents in &args.agents {
        for &answer in &args.answer_pct {
            for &talk in &args.talk_s {
                let mut cfg = SimConfig::new(agents, answer / 100.0, talk);
                cfg.seed = args.seed;
                cfg.duration_ms = (args.hours * 3_600_000.0) as u64;
                cfg.wrap_mean_ms = args.wrap_s * 1_000.0;
                cfg.cap_pct = args.cap_pct;
                configs.push(cfg);
            }
        }
    }
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let rows: Mutex<Vec<Option<Row>>> = Mutex::new((0..configs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..args.jobs.clamp(1, 16) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(cfg) = configs.get(i) else { return };
                let mut baseline = Vicidial::new(VicidialConfig {
                    drop_limit_pct: Some(args.baseline_drop_limit_pct),
                    drop_method: args.baseline_drop_method.into(),
                    difference_target: args.baseline_difference_target,
                    ..VicidialConfig::default()
                });
                let vicidial = simulate(cfg, &mut baseline);
                let predictive = simulate(cfg, &mut Predictive::default());
                let row = Row {
                    cfg: cfg.clone(),
                    vicidial,
                    predictive,
                };
                rows.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(row);
            });
        }
    });
    let rows: Vec<Row> = rows
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .flatten()
        .collect();
    print_table(args, &rows);
    println!(
        "\n{} traces × 2 pacers, {:.1} simulated hours each, in {:.1} s",
        rows.len(),
        args.hours,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn print_table(args: &SimulateArgs, rows: &[Row]) {
    println!(
        "Baseline: VICIdial, drop method {:?}, difference target {}, drop limit {} %.",
        args.baseline_drop_method, args.baseline_difference_target, args.baseline_drop_limit_pct
    );
    println!(
        "Occupancy is talk / logged-in time (talk + wrap-up / logged-in in brackets); \
         abandon is abandoned / live over the shift (worst 60-minute window in brackets); \
         wait is an agent's mean ready time per connected call; ceiling is the talk occupancy \
         of agents never idle (talk / (talk + wrap-up) of dialstack's calls): no pacer can \
         exceed it, so where VICIdial + {:.0} points is above it the target cannot be met \
         (`no (ceiling)`).",
        args.target_points
    );
    println!();
    println!(
        "| agents | answer | talk | VICIdial occupancy % | VICIdial abandon % | VICIdial wait s \
         | dialstack occupancy % | dialstack abandon % | dialstack wait s | Δ occupancy (points) \
         | ceiling % | met |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|");
    let mut missed = Vec::new();
    for r in rows {
        let (v, p) = (&r.vicidial, &r.predictive);
        let gain = 100.0 * (p.occupancy_talk - v.occupancy_talk);
        let met = gain >= args.target_points && p.abandon_pct <= args.cap_pct;
        let ceiling = if p.occupancy_handle > 0.0 {
            p.occupancy_talk / p.occupancy_handle
        } else {
            0.0
        };
        let verdict = if met {
            "yes"
        } else if 100.0 * (v.occupancy_talk - ceiling) + args.target_points > 0.0 {
            "no (ceiling)"
        } else {
            "no"
        };
        let label = format!(
            "{} agents, {:.0} %, {:.0} s",
            r.cfg.agents,
            100.0 * r.cfg.answer_rate,
            r.cfg.talk_mean_ms / 1_000.0
        );
        if !met {
            missed.push(label);
        }
        println!(
            "| {} | {:.0} % | {:.0} s | {} ({}) | {:.2} ({:.2}) | {:.1} | {} ({}) | {:.2} ({:.2}) | {:.1} | {:+.1} | {} | {} |",
            r.cfg.agents,
            100.0 * r.cfg.answer_rate,
            r.cfg.talk_mean_ms / 1_000.0,
            pct(v.occupancy_talk),
            pct(v.occupancy_handle),
            v.abandon_pct,
            v.worst_hour_abandon_pct,
            v.mean_agent_wait_s,
            pct(p.occupancy_talk),
            pct(p.occupancy_handle),
            p.abandon_pct,
            p.worst_hour_abandon_pct,
            p.mean_agent_wait_s,
            gain,
            pct(ceiling),
            verdict,
        );
    }
    println!();
    if missed.is_empty() {
        println!(
            "target (dialstack ≥ VICIdial + {:.0} points of talk occupancy at ≤ {:.0} % abandon): met on all {} traces",
            args.target_points,
            args.cap_pct,
            rows.len()
        );
    } else {
        println!(
            "target (dialstack ≥ VICIdial + {:.0} points of talk occupancy at ≤ {:.0} % abandon): missed on {} of {}: {}",
            args.target_points,
            args.cap_pct,
            missed.len(),
            rows.len(),
            missed.join("; ")
        );
    }
    let peak = rows
        .iter()
        .map(|r| r.predictive.peak_day_abandon_pct)
        .fold(0.0, f64::max);
    println!(
        "dialstack's highest abandon ratio of the day so far, after its 100th live call, on any trace: {peak:.2} %"
    );
}
