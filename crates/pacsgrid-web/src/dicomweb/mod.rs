//! DICOMweb (PS3.18) under `/dicom-web`: QIDO-RS search, WADO-RS retrieve, STOW-RS store and
//! rendered images; and WADO-URI at `/wado`. This file is the one map from URL to handler; each service lives in its
//! own module.

pub(crate) mod json;
pub(crate) mod qido;
pub(crate) mod rendered;
pub(crate) mod stow;
pub(crate) mod wado;
pub(crate) mod wado_uri;

#[cfg(test)]
mod researcher_tests;

use crate::HttpState;
use axum::routing::get;
use axum::Router;

/// The DICOMweb routes, relative to the base path.
pub(crate) fn routes() -> Router<HttpState> {
    const STUDY: &str = "/studies/{study}";
    const SERIES: &str = "/studies/{study}/series/{series}";
    const INSTANCE: &str = "/studies/{study}/series/{series}/instances/{instance}";
    const FRAMES: &str = "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}";
    Router::new()
        // QIDO-RS and STOW-RS share the collection URLs.
        .route("/studies", get(qido::search_studies).post(stow::store))
        .route(STUDY, get(wado::retrieve_study).post(stow::store_in_study))
        .route("/series", get(qido::search_series))
        .route("/instances", get(qido::search_instances))
        .route(&format!("{STUDY}/series"), get(qido::search_study_series))
        .route(
            &format!("{STUDY}/instances"),
            get(qido::search_study_instances),
        )
        .route(
            &format!("{SERIES}/instances"),
            get(qido::search_series_instances),
        )
        // WADO-RS.
        .route(&format!("{STUDY}/metadata"), get(wado::study_metadata))
        .route(SERIES, get(wado::retrieve_series))
        .route(&format!("{SERIES}/metadata"), get(wado::series_metadata))
        .route(INSTANCE, get(wado::retrieve_instance))
        .route(
            &format!("{INSTANCE}/metadata"),
            get(wado::instance_metadata),
        )
        .route(FRAMES, get(wado::retrieve_frames))
        .route(
            &format!("{INSTANCE}/bulkdata/{{*path}}"),
            get(wado::bulkdata),
        )
        // Rendered resources.
        .route(&format!("{STUDY}/rendered"), get(rendered::study_rendered))
        .route(
            &format!("{SERIES}/rendered"),
            get(rendered::series_rendered),
        )
        .route(
            &format!("{INSTANCE}/rendered"),
            get(rendered::instance_rendered),
        )
        .route(
            &format!("{FRAMES}/rendered"),
            get(rendered::frames_rendered),
        )
        .route(
            &format!("{STUDY}/thumbnail"),
            get(rendered::study_thumbnail),
        )
        .route(
            &format!("{SERIES}/thumbnail"),
            get(rendered::series_thumbnail),
        )
        .route(
            &format!("{INSTANCE}/thumbnail"),
            get(rendered::instance_thumbnail),
        )
        .route(
            &format!("{FRAMES}/thumbnail"),
            get(rendered::frames_thumbnail),
        )
}
