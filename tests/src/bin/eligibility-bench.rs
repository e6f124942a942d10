//! Eligibility benchmark (not a test; `scripts/bench-eligibility.sh`): fills
//! a MariaDB database with `--leads` leads over `--campaigns` campaigns (once;
//! later runs reuse it), then times the dispatcher's pick of the next batch
//! (`Repo::candidates`, callbacks first, then priority, then due time, over a
//! bounded index range per lane) and the history lookup for that batch, on
//! random campaigns, and prints the query plan of one lane.
//!
//!   eligibility-bench --db-url mysql://root@127.0.0.1:3306/dialstack_elig \
//!       [--campaigns 100] [--leads 10000000] [--queries 2000] [--batch 50]

use std::time::Instant;

use clap::Parser;
use dialstack_common::db::Db;
use sqlx::Row;
use task_scheduler::db::{Repo, MIGRATIONS};

#[derive(Parser, Debug)]
struct Args {
    /// The database (MariaDB/MySQL).
    #[arg(long)]
    db_url: String,
    /// Campaigns.
    #[arg(long, default_value_t = 100)]
    campaigns: u32,
    /// Leads in all.
    #[arg(long, default_value_t = 10_000_000)]
    leads: u64,
    /// Timed picks.
    #[arg(long, default_value_t = 2_000)]
    queries: usize,
    /// Leads per pick.
    #[arg(long, default_value_t = 50)]
    batch: u64,
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = Db::connect(&args.db_url).await?;
    db.migrate(MIGRATIONS).await?;
    let repo = Repo { db: db.clone() };
    let have: i64 = sqlx::query("SELECT COUNT(*) FROM leads")
        .fetch_one(&db.pool)
        .await?
        .get(0);
    let now = dialstack_common::now_ms();
    if have < args.leads as i64 {
        let t = Instant::now();
        eprintln!(
            "filling: {} campaigns, {} leads (once)",
            args.campaigns, args.leads
        );
        sqlx::query("DELETE FROM leads").execute(&db.pool).await?;
        sqlx::query("DELETE FROM campaigns")
            .execute(&db.pool)
            .await?;
        for c in 0..args.campaigns {
            sqlx::query(
                "INSERT INTO campaigns (id, name, caller_id, max_concurrent, max_cps, talk_time_ms, ring_timeout_ms, state, created_at, priority)
                 VALUES (?, 'bench', '+14155550100', 100, 10, 1000, 30000, 'running', ?, 1)",
            )
            .bind(format!("c{c:04}"))
            .bind(now)
            .execute(&db.pool)
            .await?;
        }
        // Set-based fill from MariaDB's sequence engine, a million rows per
        // statement: 85 % pending (due in the past or within a day), 1 % of
        // them callbacks, the rest done; priorities 0-9.
        let per = 1_000_000u64;
        let mut done = 0u64;
        while done < args.leads {
            let n = per.min(args.leads - done);
            let sql = format!(
                "INSERT INTO leads (id, campaign_id, seq, phone, state, lane, priority, due_at, attempts, zones, created_at, updated_at)
                 SELECT LPAD(seq, 36, '0'),
                        CONCAT('c', LPAD(seq % {c}, 4, '0')),
                        0,
                        CONCAT('+1415', LPAD(seq % 10000000, 7, '0')),
                        CASE WHEN seq % 100 < 85 THEN 'pending' ELSE 'done' END,
                        CASE WHEN seq % 100 = 0 THEN 0 ELSE 10 - (seq % 10) END,
                        seq % 10,
                        {now} - 86400000 + (seq * 7919) % 172800000,
                        seq % 3,
                        'America/Los_Angeles', {now}, {now}
                 FROM seq_{from}_to_{to}",
                c = args.campaigns,
                from = done + 1,
                to = done + n,
            );
            sqlx::query(&sql).execute(&db.pool).await?;
            done += n;
            eprintln!("  {done} leads ({:.0} s)", t.elapsed().as_secs_f64());
        }
        sqlx::query("ANALYZE TABLE leads").execute(&db.pool).await?;
        eprintln!("filled in {:.0} s", t.elapsed().as_secs_f64());
    }
    let total: i64 = sqlx::query("SELECT COUNT(*) FROM leads")
        .fetch_one(&db.pool)
        .await?
        .get(0);
    // Warm up, then time.
    let mut pick = Vec::with_capacity(args.queries);
    let mut hist = Vec::with_capacity(args.queries);
    let mut got = 0usize;
    for i in 0..(args.queries + 100) {
        let c = format!("c{:04}", fastrand::u32(..args.campaigns));
        let now = dialstack_common::now_ms();
        let t = Instant::now();
        let cands = repo.candidates(&c, now, args.batch).await?;
        let p = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        repo.history(&c, &cands, now).await?;
        let h = t.elapsed().as_secs_f64() * 1000.0;
        if i >= 100 {
            pick.push(p);
            hist.push(h);
            got += cands.len();
        }
    }
    pick.sort_by(f64::total_cmp);
    hist.sort_by(f64::total_cmp);
    println!(
        "leads: {total} over {} campaigns; batch {}",
        args.campaigns, args.batch
    );
    println!(
        "pick next batch (candidates): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} picks ({:.1} leads each)",
        pct(&pick, 0.5),
        pct(&pick, 0.99),
        pick[pick.len() - 1],
        pick.len(),
        got as f64 / pick.len() as f64
    );
    println!(
        "history of the batch (DNC, 24 h and 72 h attempts): p50 {:.2} ms, p99 {:.2} ms",
        pct(&hist, 0.5),
        pct(&hist, 0.99)
    );
    println!("plan of one lane:");
    for r in sqlx::query(
        "EXPLAIN SELECT id, phone, zones, attempts, due_at, lane FROM leads
         WHERE campaign_id = 'c0001' AND state = 'pending' AND lane = 5 AND due_at <= ?
         ORDER BY due_at, id LIMIT 50",
    )
    .bind(now)
    .fetch_all(&db.pool)
    .await?
    {
        let cols: Vec<String> = (0..r.len())
            .map(|i| {
                r.try_get::<Option<String>, _>(i)
                    .ok()
                    .flatten()
                    .or_else(|| {
                        r.try_get::<Option<i64>, _>(i)
                            .ok()
                            .flatten()
                            .map(|v| v.to_string())
                    })
                    .unwrap_or_else(|| "NULL".into())
            })
            .collect();
        println!("  {}", cols.join(" | "));
    }
    Ok(())
}
