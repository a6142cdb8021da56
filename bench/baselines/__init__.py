"""What the benchmark compares bertserve against: the in-process pipeline (`pipeline`) and Ray Serve
serving the same pipeline over the same gRPC contract (`ray_serve`)."""
