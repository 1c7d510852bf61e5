pub mod bench;
mod bench_push;
mod bench_read;
mod bench_soak;
pub mod client;
pub mod read;
pub mod serve;
pub mod view;
