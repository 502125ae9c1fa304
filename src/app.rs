//! Application: placeholder until the webhook core lands.
