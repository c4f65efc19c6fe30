//! STOW-RS: multipart/related uploads stored with the same rules as C-STORE.

use crate::problem::Problem;

/// Placeholder until this handler is written.
pub(crate) async fn store() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}

/// Placeholder until this handler is written.
pub(crate) async fn store_in_study() -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not implemented yet",
    )
}
