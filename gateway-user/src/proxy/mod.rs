//! The serving stack: worker threads with their listening sockets, dialling
//! backends, the tasks a drain waits for, and the counters report.
pub mod dial;
pub mod report;
pub mod tasks;
pub mod workers;
