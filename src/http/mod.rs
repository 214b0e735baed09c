//! HTTP/1.1, pure: parsing, the per-connection state machine, routing, access rules, the
//! status table and response encoding. The worker process owns the sockets and calls in:
//! [`admit`] routes and authorises a request, [`api`] plans it and shapes the keeper's
//! answer; every status the worker sends is decided here. [`access`] says what the access
//! log may show of a request. [`rooms`] plans and shapes the waiting rooms' routes,
//! [`browser`] holds ticket tokens, CORS and the dashboard, and [`pages`] holds the pages
//! they serve.

pub mod access;
pub mod admit;
pub mod api;
pub mod auth;
pub mod browser;
pub mod conn;
pub mod pages;
pub mod parse;
pub mod response;
pub mod rooms;
pub mod route;
pub mod status;
