//! Online prediction: models trained from the event stream and scored per event.
