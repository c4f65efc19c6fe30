//! Rendered resources: instances and frames as JPEG or PNG, with windowing.

use crate::problem::Problem;

/// Placeholder until this handler is written.
pub(crate) async fn study_rendered() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn series_rendered() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn instance_rendered() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn frames_rendered() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn study_thumbnail() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn series_thumbnail() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn instance_thumbnail() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn frames_thumbnail() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}
