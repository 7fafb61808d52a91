//! Observability, the init's side: what leaves the machine by itself so that operators can
//! see a host they cannot log into (docs/OBSERVABILITY.md).
//!
//! The work that talks to peers is not done here: the observability agent
//! (`/usr/libexec/crust/observe`, the `crust-observe` crate) serves the Prometheus endpoint
//! and ships logs to a syslog collector, in processes of their own that [`agents`]
//! starts, restarts and stops like services, so PID 1's loop never waits on a scraper or a
//! collector. This module only
//!
//! - publishes the init's facts as files the exporter reads ([`status`]: phase times,
//!   services, the update agent, the clock, dm-verity, the boot count), written on changes,
//!   never per output line;
//! - hands every console line and service output line to the shipper through a pipe that
//!   it never waits on ([`sink`]: a full pipe drops the line and counts it; the count is
//!   sent once there is room);
//! - supervises the agent's two modes ([`agents`]).

pub mod agents;
pub mod sink;
pub mod status;

pub use agents::Agents;
