//! WADO-RS: instances as multipart/related, metadata as DICOM JSON, frames and bulk data.

use crate::problem::Problem;

/// Placeholder until this handler is written.
pub(crate) async fn retrieve_study() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn retrieve_series() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn retrieve_instance() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn study_metadata() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn series_metadata() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn instance_metadata() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn retrieve_frames() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn bulkdata() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}
