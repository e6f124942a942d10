//! user-service's integration tests: the real service in the test process on
//! port 0, against a fresh SQLite file or MariaDB database each
//! (`DIALSTACK_TEST_MYSQL`, default `mysql://root@127.0.0.1:3306`).
//!
//! # Layout
//! - [`helpers`]: `spawn_app`, fresh databases, the calls the tests make
//! - [`signing_keys`]: signing seeds sealed with the key-encryption key,
//!   its rotation, and the start refused when no configured key opens them

mod helpers;
mod signing_keys;
