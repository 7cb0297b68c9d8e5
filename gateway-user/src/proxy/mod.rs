//! The serving stack: worker threads with their listening sockets, dialling
//! backends, the tasks a drain waits for, the signals it answers and the
//! counters report.
pub mod dial;
pub mod report;
pub mod signals;
pub mod tasks;
pub mod workers;
