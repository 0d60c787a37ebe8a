//! One module per command group. Each takes the API client and a writer for stdout; errors
//! go up to [`crate::main`], which prints them on stderr.

pub mod apply;
pub mod exec;
pub mod logs;
pub mod network;
pub mod node;
pub mod payload;
pub mod resources;
pub mod service;
pub mod stack;
pub mod system;
pub mod token;
pub mod volume;
