//! QIDO-RS: searches for studies, series and instances, answered from the index.

use crate::problem::Problem;

/// Placeholder until this handler is written.
pub(crate) async fn search_studies() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn search_series() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn search_instances() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn search_study_series() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn search_study_instances() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn search_series_instances() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}
