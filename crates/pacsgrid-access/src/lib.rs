//! Connectivity-layer access control: who may connect and what they may do (AE rights for
//! DIMSE, roles for HTTP users and programs, sites for the grid), and the one access point
//! through which every service path asks permission and leaves its audit record.
//!
//! Protocols never decide rights themselves: they name the [`Principal`] and the
//! [`Operation`], and [`AccessPoint`] answers, writing the refusal or the access to the audit
//! log (PS3.15 A.5) before the caller acknowledges anything.

#![warn(missing_docs)]

pub mod ae;
pub mod config;
pub mod error;
mod logins;
pub mod operation;
pub mod point;
pub mod principal;
pub mod rules;
pub mod tally;
pub mod token;

pub use ae::{AeRight, AeRights, AeRule};
pub use config::AccessConfig;
pub use error::{AccessError, Denied};
pub use operation::Operation;
pub use point::AccessPoint;
pub use principal::{Channel, Grants, Principal, PrincipalKind, Role};
pub use rules::View;
pub use tally::StudyTally;
pub use token::{new_api_key, Authenticator, HttpAuthConfig, JwtConfig, NewApiKey};
