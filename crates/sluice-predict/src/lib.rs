//! Online prediction: models trained from the event stream and scored on every event.
//!
//! Each model is a logistic regression trained online with FTRL-Proximal over hashed features
//! of the event and its user's profile ([`ftrl`], [`features`]). Labels come later than events:
//! "did this user do the outcome within the horizon of this event?" ([`model`]). The models
//! ride along the hot projection as one [`sluice_hot::EventHook`] ([`Models`]): every event is
//! scored and the score lands in the user's profile in the same atomic batch as the rest of the
//! profile; the models' state is checkpointed atomically ([`checkpoint`]) with the journal
//! positions it reflects, so after a restart each model learns again from exactly where its
//! checkpoint stopped.

pub mod bench;
pub mod checkpoint;
mod config;
mod engine;
mod error;
pub mod features;
pub mod ftrl;
pub mod metrics;
pub mod model;
pub mod synthetic;

pub use config::{ModelConfig, ModelSpec, PredictConfig, PredictSettings};
pub use engine::{Models, run_offline};
pub use error::PredictError;
pub use model::{Labeled, OnlineModel, Progressive};
