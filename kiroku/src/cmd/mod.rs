pub mod bench;
mod bench_push;
mod bench_read;
pub mod client;
pub mod read;
pub mod serve;
pub mod view;
