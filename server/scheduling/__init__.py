"""Admission, batching and routing of work to replicas."""
