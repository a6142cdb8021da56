"""bertserve.server: the grpc.aio front end (no torch here)."""
