//! Integration tests of the HTTP API against a real etcd: the API server runs on
//! 127.0.0.1:0 in the test process, driven with reqwest.

mod apply;
mod auth;
mod bad_input;
mod payloads;
mod rest;
mod support;
mod volumes;
mod watch;
mod web;
