"""Helpers shared by the test suites: tiny checkpoints and a real server process."""
