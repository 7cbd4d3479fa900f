//! Telemetry of run ends: `bridge_runs_finalized_total{reason}`,
//! `bridge_reconcile_errors_total`, `bridge_guild_channels`. Typed events as in
//! `crate::events`: business code calls `emit`, never the registry.

use ops::metrics::{Metrics, MetricsError};
use prometheus::{IntCounter, IntCounterVec, IntGauge};

/// Why a run ended: the closed label set of `bridge_runs_finalized_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalizeReason {
    /// The watcher called `complete` (the normal end).
    Completed,
    /// The pod was deleted (or is gone from a relist) before `complete`.
    Deleted,
    /// The kubelet evicted the pod (node pressure, API eviction).
    Evicted,
    /// A container of the pod was OOM-killed.
    OomKilled,
    /// The pod failed (a container exited non-zero).
    Failed,
    /// The pod succeeded, but its watcher never called `complete`.
    SucceededWithoutComplete,
    /// No heartbeat for `RUN_SILENCE_TIMEOUT` (outside Kubernetes).
    Silent,
}

impl FinalizeReason {
    pub const ALL: [Self; 7] = [
        Self::Completed,
        Self::Deleted,
        Self::Evicted,
        Self::OomKilled,
        Self::Failed,
        Self::SucceededWithoutComplete,
        Self::Silent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Deleted => "deleted",
            Self::Evicted => "evicted",
            Self::OomKilled => "oom_killed",
            Self::Failed => "failed",
            Self::SucceededWithoutComplete => "succeeded_without_complete",
            Self::Silent => "silent",
        }
    }

    /// What the closing embed says happened.
    pub fn title(self) -> &'static str {
        match self {
            Self::Completed => "Run completed",
            Self::Deleted => "Run ended: pod deleted",
            Self::Evicted => "Run ended: pod evicted",
            Self::OomKilled => "Run ended: OOMKilled",
            Self::Failed => "Run ended: pod failed",
            Self::SucceededWithoutComplete => "Run ended: pod finished without completing",
            Self::Silent => "Run ended: watcher silent",
        }
    }
}

/// The run-end metrics (registered with the other bot-bridge metrics).
#[derive(Clone, Debug)]
pub struct LifecycleMetrics {
    finalized: IntCounterVec,
    reconcile_errors: IntCounter,
    guild_channels: IntGauge,
}

impl LifecycleMetrics {
    pub fn new(metrics: &Metrics) -> Result<Self, MetricsError> {
        let m = Self {
            finalized: metrics.counter_vec(
                "bridge_runs_finalized_total",
                "Runs ended, by reason (completed by the watcher, or finalised by the reconciler: \
                 deleted, evicted, oom_killed, failed, succeeded_without_complete, silent).",
                &["reason"],
            )?,
            reconcile_errors: metrics.counter(
                "bridge_reconcile_errors_total",
                "Failures of the run reconciler: Kubernetes watch or Event errors, failed finalisations.",
            )?,
            guild_channels: metrics.gauge(
                "bridge_guild_channels",
                "Channels in the guild (Discord allows 500), as last listed.",
            )?,
        };
        for r in FinalizeReason::ALL {
            m.finalized.with_label_values(&[r.as_str()]);
        }
        Ok(m)
    }

    pub(crate) fn finalized(&self, reason: FinalizeReason) {
        self.finalized.with_label_values(&[reason.as_str()]).inc();
    }

    pub(crate) fn set_guild_channels(&self, n: usize) {
        self.guild_channels
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    #[cfg(test)]
    pub(crate) fn finalized_count(&self, reason: FinalizeReason) -> u64 {
        self.finalized.with_label_values(&[reason.as_str()]).get()
    }
}

/// The reconciler finalised a run whose watcher never called `complete`.
#[derive(Debug)]
pub struct RunFinalized<'a> {
    pub run_id: &'a str,
    pub reason: FinalizeReason,
    pub detail: &'a str,
}

impl RunFinalized<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            run_id = self.run_id,
            reason = self.reason.as_str(),
            detail = self.detail,
            "run finalised without complete"
        );
    }
}

/// Something in the reconciler failed (watch, Event, finalisation); retried.
pub struct ReconcileError<'a> {
    pub what: &'static str,
    pub run_id: Option<&'a str>,
    pub error: &'a dyn std::fmt::Display,
}

impl ReconcileError<'_> {
    pub fn emit(&self, m: &LifecycleMetrics) {
        tracing::warn!(
            what = self.what,
            run_id = self.run_id.unwrap_or(""),
            error = %self.error,
            "reconcile error"
        );
        m.reconcile_errors.inc();
    }
}
