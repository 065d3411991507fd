//! Black-box tests of the HTTP API: the real router on a real port, the embedded store on a
//! real file, and tokens checked against keys fetched over HTTP.

mod auth;
mod bodies;
mod concurrency;
mod edge;
mod helpers;
mod usage;
