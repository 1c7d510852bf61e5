pub mod bench;
pub mod client;
pub mod read;
pub mod serve;
