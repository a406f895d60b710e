//! Several workers in one runtime with one shutdown, as Watermill's Router:
//! each route binds a source to its handler; one cancellation stops them all,
//! each with its own grace period, and the report says what each did.
//!
//! ```no_run
//! # async fn f(client: mq_core::Client) -> mq_core::Result<()> {
//! use mq_core::{Received, Router, Worker};
//!
//! let emails = Worker::new(client.consumer("emails").await?, |_m: Received| async { Ok(()) });
//! let images = Worker::new(client.consumer("images").await?, |_m: Received| async { Ok(()) })
//!     .concurrency(4);
//! let report = Router::new()
//!     .route("emails", emails)
//!     .route("images", images)
//!     .run_until_ctrl_c()
//!     .await;
//! println!("{:?}", report.total());
//! # Ok(()) }
//! ```
//!
//! A route whose consumer fails permanently (closed, misconfigured) stops
//! the whole router, so the process can exit and be restarted rather than
//! run with one route silently dead; the other routes shut down gracefully.

use std::fmt;

use futures_util::future::BoxFuture;
use tokio::task::JoinSet;

use crate::consumer::Consumer;
use crate::error::{Error, Result};
use crate::worker::{CancellationToken, Worker, WorkerReport, WorkerStats};

type RunFn = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, Result<WorkerReport>> + Send>;

struct Route {
    name: String,
    stats: WorkerStats,
    run: RunFn,
}

/// Runs several [`Worker`]s together; see the [module docs](self).
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// A router with no routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `worker` under `name` (used in the report and in logs).
    pub fn route<C: Consumer + 'static>(
        mut self,
        name: impl Into<String>,
        worker: Worker<C>,
    ) -> Self {
        let stats = worker.stats();
        self.routes.push(Route {
            name: name.into(),
            stats,
            run: Box::new(move |token| Box::pin(worker.run(token))),
        });
        self
    }

    /// A live view of each route's counts, by name.
    pub fn stats(&self) -> Vec<(String, WorkerStats)> {
        self.routes
            .iter()
            .map(|r| (r.name.clone(), r.stats.clone()))
            .collect()
    }

    /// Runs every route until `shutdown` is cancelled or one route fails
    /// permanently, then shuts all of them down gracefully.
    pub async fn run(self, shutdown: CancellationToken) -> RouterReport {
        let stop = shutdown.child_token();
        let mut tasks = JoinSet::new();
        let names: Vec<String> = self.routes.iter().map(|r| r.name.clone()).collect();
        for (index, route) in self.routes.into_iter().enumerate() {
            let run = (route.run)(stop.clone());
            tasks.spawn(async move { (index, run.await) });
        }
        let mut results: Vec<Option<Result<WorkerReport>>> = names.iter().map(|_| None).collect();
        while let Some(done) = tasks.join_next().await {
            let (index, result) = match done {
                Ok(done) => done,
                Err(e) => {
                    // A worker task panicked: every other route stops too.
                    tracing::error!(error = %e, "a router route's task failed");
                    stop.cancel();
                    continue;
                }
            };
            if let Err(e) = &result {
                tracing::error!(route = %names[index], error = %e, "route failed; stopping the router");
                stop.cancel();
            }
            results[index] = Some(result);
        }
        RouterReport {
            routes: names
                .into_iter()
                .zip(results)
                .map(|(name, result)| {
                    let result = result.unwrap_or_else(|| {
                        Err(Error::new(
                            crate::ErrorKind::Closed,
                            format!("route {name} stopped abnormally (its task panicked)"),
                        ))
                    });
                    (name, result)
                })
                .collect(),
        }
    }

    /// Runs until ctrl-c (SIGINT), then shuts every route down gracefully.
    pub async fn run_until_ctrl_c(self) -> RouterReport {
        let token = CancellationToken::new();
        let trigger = token.clone();
        let signal = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("ctrl-c received; shutting down the router");
            }
            trigger.cancel();
        });
        let report = self.run(token).await;
        signal.abort();
        report
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.routes.iter().map(|r| r.name.as_str()).collect();
        f.debug_struct("Router").field("routes", &names).finish()
    }
}

/// What each route of a [`Router`] did, in the order they were added.
#[derive(Debug)]
pub struct RouterReport {
    /// Each route's name and its worker's report, or the error it stopped with.
    pub routes: Vec<(String, Result<WorkerReport>)>,
}

impl RouterReport {
    /// The counts of every route that stopped normally, added up.
    pub fn total(&self) -> WorkerReport {
        self.routes
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .fold(WorkerReport::default(), |sum, r| sum.plus(r))
    }

    /// Whether every route stopped normally.
    pub fn is_ok(&self) -> bool {
        self.routes.iter().all(|(_, r)| r.is_ok())
    }
}
