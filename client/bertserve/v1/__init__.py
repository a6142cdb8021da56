"""Generated protobuf and gRPC stubs for package bertserve.v1 (do not edit)."""
