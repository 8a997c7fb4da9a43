//! Active health checks (filled in by the canary/fallback work).
