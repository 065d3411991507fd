//! Black-box tests of the HTTP API: the real router on a real port, the embedded store on a
//! real file or Firestore on the real emulator, and tokens checked against keys fetched over
//! HTTP.

#[path = "../support/auth_emulator.rs"]
mod auth_emulator;
#[path = "../support/emulator.rs"]
mod emulator;
#[path = "../support/pubsub_emulator.rs"]
mod pubsub_emulator;
#[path = "../support/webhook_receiver.rs"]
mod webhook_receiver;

mod activity;
mod admin;
mod auth;
mod bodies;
mod concurrency;
mod cut_proxy;
mod dashboard;
mod edge;
mod faults;
mod firestore;
mod helpers;
mod notifications;
mod openapi;
mod overrides;
mod reservations;
mod steering;
mod stream;
mod usage;
mod what_if;
