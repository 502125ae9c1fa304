//! Test support: a mock WeChat API server. Placeholder.
