"""Differential privacy: record-level DP-SGD (local), user-level DP-FedAvg (central), accounting and auditing."""
