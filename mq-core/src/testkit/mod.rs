//! The conformance suite: one list of scenarios every backend must pass
//! (DESIGN.md §10). Public behind the `testkit` feature so a third-party
//! backend can run it too:
//!
//! ```no_run
//! # async fn f() {
//! use mq_core::testkit::{run_suite, Target};
//! let target = Target::new("memory", "memory://conformance", mq_core::Registry::with_memory());
//! let report = run_suite(target).await;
//! assert_eq!(report.failed(), 0, "{}", report.summary());
//! # }
//! ```
//!
//! Each scenario takes a fresh connection and fresh, uniquely named
//! destinations, so scenarios (and whole suites, see [`run_stress`]) run in
//! parallel. A scenario whose capability the backend lacks is *skipped* with
//! the reason, never passed.
//!
//! Environment: `MQ_TEST_FILTER` runs only scenarios whose name contains it;
//! `MQ_TEST_CONCURRENCY` (default 4) is how many scenarios run at once.

pub mod config;
pub mod delivery;
pub mod dlq;
pub mod failure;
pub mod middleware;
pub mod patterns;
pub mod restart;
mod support;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::capabilities::Capabilities;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::registry::Registry;

pub use support::*;

/// The backend under test.
#[derive(Clone)]
pub struct Target {
    /// Name shown in the report (`"rabbitmq"`).
    pub backend: String,
    /// URL every scenario connects to.
    pub url: String,
    /// Registry that knows the URL's scheme.
    pub registry: Registry,
    /// Shell command that restarts the broker (for the restart scenario).
    pub restart_command: Option<String>,
    /// Broker the restart scenario runs against instead of `url`, when the
    /// restart command restarts another instance (one that keeps its data
    /// while the suites use a faster in-memory one).
    pub restart_url: Option<String>,
    /// Scenarios this target skips, with why (a limitation of an emulator,
    /// not of `mq`); each shows as skipped with that reason.
    pub skips: Vec<(&'static str, String)>,
}

impl Target {
    /// A target without a restart command.
    pub fn new(backend: impl Into<String>, url: impl Into<String>, registry: Registry) -> Self {
        Target {
            backend: backend.into(),
            url: url.into(),
            registry,
            restart_command: None,
            restart_url: None,
            skips: Vec::new(),
        }
    }

    /// Skips `scenario` on this target, reporting `why`.
    pub fn skip(mut self, scenario: &'static str, why: impl Into<String>) -> Self {
        self.skips.push((scenario, why.into()));
        self
    }

    /// Sets the command that restarts the broker.
    pub fn with_restart_command(mut self, command: Option<String>) -> Self {
        self.restart_command = command.filter(|c| !c.trim().is_empty());
        self
    }

    /// Runs the restart scenario against `url` instead of the main URL.
    pub fn with_restart_url(mut self, url: Option<String>) -> Self {
        self.restart_url = url.filter(|u| !u.trim().is_empty());
        self
    }

    /// This target as the restart scenario sees it.
    fn for_restart(&self) -> Target {
        let mut target = self.clone();
        if let Some(url) = &self.restart_url {
            target.url = url.clone();
        }
        target
    }

    /// Connects to the target.
    pub async fn connect(&self) -> Result<Client> {
        self.registry.connect(&self.url).await
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("backend", &self.backend)
            .field("url", &crate::url::redact_str(&self.url))
            .field("restart_command", &self.restart_command)
            .field(
                "restart_url",
                &self.restart_url.as_deref().map(crate::url::redact_str),
            )
            .finish()
    }
}

/// What a scenario gets: the target, a connected client and a name prefix.
#[derive(Debug, Clone)]
pub struct Ctx {
    target: Arc<Target>,
    client: Client,
    scenario: &'static str,
}

impl Ctx {
    /// The connected client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The target under test.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The backend's capabilities.
    pub fn caps(&self) -> Capabilities {
        self.client.capabilities()
    }

    /// A destination name no other scenario or run uses.
    pub fn unique(&self, base: &str) -> String {
        let id = crate::message::new_message_id().replace('-', "");
        // The random tail of a v7 UUID; the time prefix would repeat within a run.
        format!(
            "mqt-{}-{base}-{}",
            self.scenario.replace('_', "-"),
            &id[20..]
        )
    }

    /// A second, independent connection to the target.
    pub async fn connect(&self) -> Result<Client> {
        self.target.connect().await
    }
}

/// Why a scenario did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The backend cannot run this scenario (a capability is missing).
    Skip(String),
    /// The backend does not behave as the contract says.
    Fail(String),
}

impl From<Error> for Verdict {
    fn from(e: Error) -> Self {
        Verdict::Fail(format!("unexpected error: {e}"))
    }
}

/// What a scenario returns.
pub type Outcome = std::result::Result<(), Verdict>;

/// Fails the scenario with a message unless `cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::testkit::Verdict::Fail(format!($($arg)+)));
        }
    };
}

/// Fails the scenario unless both sides are equal, showing them.
#[macro_export]
macro_rules! check_eq {
    ($left:expr, $right:expr, $($arg:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err($crate::testkit::Verdict::Fail(format!(
                "{}: left {:?} != right {:?}", format!($($arg)+), l, r
            )));
        }
    }};
}

type ScenarioFn = fn(Ctx) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// One named behaviour every backend must have.
#[derive(Clone, Copy)]
pub struct Scenario {
    /// Short name, used by `MQ_TEST_FILTER`.
    pub name: &'static str,
    /// Runs the scenario.
    pub run: ScenarioFn,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

macro_rules! scenario {
    ($module:ident :: $name:ident) => {
        Scenario {
            name: stringify!($name),
            run: |ctx| Box::pin($module::$name(ctx)),
        }
    };
}

/// Every scenario, in the order of the contract (DESIGN.md §10, issue list).
pub fn scenarios() -> Vec<Scenario> {
    vec![
        scenario!(delivery::send_receive_intact),
        scenario!(delivery::competing_consumers_lose_nothing),
        scenario!(delivery::destinations_do_not_cross),
        scenario!(delivery::nack_redelivers_with_next_attempt),
        scenario!(delivery::delayed_nack_waits),
        scenario!(delivery::dropped_or_closed_deliveries_come_back),
        scenario!(delivery::consumer_churn_loses_nothing),
        scenario!(patterns::order_per_key),
        scenario!(patterns::groups_each_get_every_message),
        scenario!(middleware::retry_then_dead_letter),
        scenario!(middleware::dedup_runs_once_and_survives_a_crash),
        scenario!(config::size_limit_is_exact),
        scenario!(config::bad_urls_are_clear_errors),
        scenario!(middleware::graceful_shutdown_loses_nothing),
        scenario!(delivery::batch_send_reports_each_message),
        scenario!(restart::broker_restart_recovers),
        scenario!(middleware::json_round_trip_and_decode_failure),
        scenario!(patterns::request_reply),
        scenario!(delivery::out_of_order_settlement_is_safe),
        scenario!(delivery::settle_from_another_task),
        scenario!(config::no_secrets_in_debug_or_errors),
        scenario!(failure::settle_failure_returns_the_message),
        scenario!(failure::redrive_and_redead_letter_keep_the_message),
        scenario!(failure::rebalance_while_held),
        scenario!(failure::foreign_values_do_not_crash),
        scenario!(failure::nack_after_max_is_safe),
    ]
}

/// How one scenario ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// It passed.
    Passed,
    /// It could not run here, and why.
    Skipped(String),
    /// It failed, and how.
    Failed(String),
}

/// The results of one suite run against one backend.
#[derive(Debug, Clone)]
pub struct SuiteReport {
    /// The backend's name.
    pub backend: String,
    /// Each scenario's name, status and duration, in the order they finished.
    pub results: Vec<(&'static str, Status, Duration)>,
}

impl SuiteReport {
    fn count(&self, f: impl Fn(&Status) -> bool) -> usize {
        self.results.iter().filter(|(_, s, _)| f(s)).count()
    }

    /// Scenarios passed.
    pub fn passed(&self) -> usize {
        self.count(|s| *s == Status::Passed)
    }

    /// Scenarios failed.
    pub fn failed(&self) -> usize {
        self.count(|s| matches!(s, Status::Failed(_)))
    }

    /// Scenarios skipped.
    pub fn skipped(&self) -> usize {
        self.count(|s| matches!(s, Status::Skipped(_)))
    }

    /// The closing line: `conformance <backend>: N passed, N failed, N skipped`.
    ///
    /// Failed scenarios are named in it, so a CI log cut down to its head
    /// and tail still says which ones.
    pub fn summary(&self) -> String {
        let failed: Vec<&str> = self
            .results
            .iter()
            .filter(|(_, s, _)| matches!(s, Status::Failed(_)))
            .map(|(n, _, _)| *n)
            .collect();
        let named = if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join(", "))
        };
        format!(
            "conformance {}: {} passed, {} failed{named}, {} skipped",
            self.backend,
            self.passed(),
            self.failed(),
            self.skipped()
        )
    }

    /// The failures, one per line.
    pub fn failures(&self) -> String {
        self.results
            .iter()
            .filter_map(|(n, s, _)| match s {
                Status::Failed(why) => Some(format!("  {n}: {why}")),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Longest a scenario may run before it counts as failed.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(240);

/// Runs every scenario (filtered by `MQ_TEST_FILTER`) against `target`,
/// printing one line per scenario to stderr as it finishes.
pub async fn run_suite(target: Target) -> SuiteReport {
    run_selected(target, |_| true).await
}

/// Runs only the scenarios named in `names` (and matching `MQ_TEST_FILTER`),
/// e.g. the rebalance scenario against a broker kept for that purpose.
pub async fn run_named(target: Target, names: &[&str]) -> SuiteReport {
    run_selected(target, |name| names.contains(&name)).await
}

async fn run_selected(target: Target, chosen: impl Fn(&str) -> bool) -> SuiteReport {
    let filter = std::env::var("MQ_TEST_FILTER").unwrap_or_default();
    let concurrency = std::env::var("MQ_TEST_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4usize)
        .max(1);
    let target = Arc::new(target);
    let (exclusive, shared): (Vec<Scenario>, Vec<Scenario>) = scenarios()
        .into_iter()
        .filter(|s| s.name.contains(filter.as_str()) && chosen(s.name))
        .partition(|s| EXCLUSIVE.contains(&s.name));
    let mut results = futures_util::stream::iter(shared)
        .map(|scenario| run_one(target.clone(), scenario))
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    // Scenarios that disturb the broker for everyone run alone, last.
    let restart_target = Arc::new(target.for_restart());
    for scenario in exclusive {
        results.push(run_one(restart_target.clone(), scenario).await);
    }
    SuiteReport {
        backend: target.backend.clone(),
        results,
    }
}

/// Scenarios that must not overlap with others (they restart the broker).
const EXCLUSIVE: &[&str] = &["broker_restart_recovers"];

async fn run_one(target: Arc<Target>, scenario: Scenario) -> (&'static str, Status, Duration) {
    let started = Instant::now();
    if let Some((_, why)) = target.skips.iter().find(|(name, _)| *name == scenario.name) {
        return (
            scenario.name,
            Status::Skipped(why.clone()),
            started.elapsed(),
        );
    }
    let status = match target.connect().await {
        Err(e) => Status::Failed(format!("cannot connect: {e}")),
        Ok(client) => {
            let ctx = Ctx {
                target: target.clone(),
                client: client.clone(),
                scenario: scenario.name,
            };
            let mut run = tokio::spawn((scenario.run)(ctx));
            let finished = tokio::time::timeout(SCENARIO_TIMEOUT, &mut run).await;
            // A scenario that ran out of time must not keep loading the
            // broker (or holding its consumers) while the others run.
            run.abort();
            let status = match finished {
                Ok(Ok(Ok(()))) => Status::Passed,
                Ok(Ok(Err(Verdict::Skip(why)))) => Status::Skipped(why),
                Ok(Ok(Err(Verdict::Fail(why)))) => Status::Failed(why),
                Ok(Err(join)) => Status::Failed(format!("scenario panicked: {join}")),
                Err(_) => Status::Failed(format!("did not finish within {SCENARIO_TIMEOUT:?}")),
            };
            let _ = client.close().await;
            status
        }
    };
    let elapsed = started.elapsed();
    let shown = match &status {
        Status::Passed => "ok".to_owned(),
        Status::Skipped(why) => format!("SKIPPED ({why})"),
        Status::Failed(why) => format!("FAILED: {why}"),
    };
    eprintln!(
        "conformance {} {} ... {shown} [{:.1}s]",
        target.backend,
        scenario.name,
        elapsed.as_secs_f64()
    );
    (scenario.name, status, elapsed)
}

/// Runs `copies` suites at once against the same target (stress mode, to
/// shake out races and leaks) and merges their reports.
pub async fn run_stress(target: Target, copies: usize) -> SuiteReport {
    let reports =
        futures_util::future::join_all((0..copies.max(1)).map(|_| run_suite(target.clone()))).await;
    SuiteReport {
        backend: target.backend.clone(),
        results: reports.into_iter().flat_map(|r| r.results).collect(),
    }
}
