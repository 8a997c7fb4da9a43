//! Control plane (AWS): filled in by the control-plane work.
