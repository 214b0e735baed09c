//! The one integration test binary: model-based tests of the core, the configuration and
//! command-line behaviour of the real binary, the layering rule, end-to-end tests of the
//! real server (HTTP, dispatch, lifecycle, binary upgrade, hostile clients), the command line
//! through a TLS-terminating nginx, the etcd link against a real etcd, and the browser rig
//! (headless Chromium, the contrib nginx waiting room).

mod api;
mod auth;
mod browser;
mod browser_smoke;
mod budgets;
mod cli;
mod cli_help;
mod client;
mod cluster;
mod cluster_log;
mod cluster_routes;
mod cluster_tls;
mod compat;
mod declare;
mod dispatch;
mod durability;
mod etcd;
mod formats;
mod fuzz_seeds;
mod hostile;
mod layering;
mod lifecycle;
mod lock_props;
mod logs;
mod metrics;
mod metrics_contrib;
mod model;
mod openapi;
mod outbox;
mod roles;
mod rooms;
mod rooms_site;
mod rw;
mod server;
mod support;
mod systemd;
mod tenancy;
mod tls;
mod tls_proxy;
mod upgrade;
