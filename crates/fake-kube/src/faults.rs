//! Injected failures: what `POST /_admin/faults` queues and the API routes
//! serve. Faults are taken in the order they were queued, by the first
//! request whose route they name; one without `count` stays until cleared.

use serde::{Deserialize, Serialize};

/// The API routes a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
    TokenReviews,
    /// Pod lists (not watches).
    PodsList,
    /// Pod watches (`?watch=true`), at the start of the request.
    PodsWatch,
    /// `GET …/pods/{name}`.
    PodsGet,
    /// Events, both APIs.
    Events,
    /// Leases.
    Leases,
    /// Every API route.
    All,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::TokenReviews => "token_reviews",
            Route::PodsList => "pods_list",
            Route::PodsWatch => "pods_watch",
            Route::PodsGet => "pods_get",
            Route::Events => "events",
            Route::Leases => "leases",
            Route::All => "all",
        }
    }
}

/// What a fault does to the request it hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer `status` with a `Status` body (503 `ServiceUnavailable`, 500,
    /// 429, …) and `Retry-After` if given. Note that kube's client retries
    /// 429, 503 and 504 on its own.
    Status {
        status: u16,
        #[serde(default)]
        retry_after_seconds: Option<u64>,
    },
    /// Never answer (until the fault is cleared, then the request proceeds):
    /// an apiserver or webhook that hangs.
    Hang,
    /// Close the connection without a response: unreachable mid-request.
    Reset,
}

/// A queued fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub route: Route,
    #[serde(flatten)]
    pub kind: FaultKind,
    /// Requests it hits; `None`: every one until cleared.
    #[serde(default)]
    pub count: Option<u32>,
}

impl Fault {
    /// A fault that stays until [`crate::FakeKube::clear_faults`].
    pub fn always(route: Route, kind: FaultKind) -> Self {
        Self {
            route,
            kind,
            count: None,
        }
    }

    pub fn times(route: Route, kind: FaultKind, count: u32) -> Self {
        Self {
            route,
            kind,
            count: Some(count),
        }
    }
}

/// The pending faults.
#[derive(Debug, Clone, Default)]
pub struct Faults(Vec<Fault>);

impl Faults {
    pub fn push(&mut self, f: Fault) {
        if f.count != Some(0) {
            self.0.push(f);
        }
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn pending(&self) -> &[Fault] {
        &self.0
    }

    /// Takes one hit of the first fault for `route`.
    pub fn take(&mut self, route: Route) -> Option<FaultKind> {
        let i = self
            .0
            .iter()
            .position(|f| f.route == route || f.route == Route::All)?;
        let f = &mut self.0[i];
        let kind = f.kind.clone();
        if let Some(n) = &mut f.count {
            *n -= 1;
            if *n == 0 {
                self.0.remove(i);
            }
        }
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_run_out_and_standing_ones_stay() {
        let mut f = Faults::default();
        f.push(Fault::times(Route::TokenReviews, FaultKind::Reset, 1));
        f.push(Fault::always(Route::All, FaultKind::Hang));
        assert_eq!(f.take(Route::TokenReviews), Some(FaultKind::Reset));
        assert_eq!(f.take(Route::TokenReviews), Some(FaultKind::Hang));
        assert_eq!(f.take(Route::Leases), Some(FaultKind::Hang));
        assert_eq!(f.pending().len(), 1);
        let parsed: Fault =
            serde_json::from_str(r#"{"route":"token_reviews","kind":"status","status":503}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.count, None);
    }
}
