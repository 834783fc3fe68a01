"""L4 latency: GPU specs, the cost model and its estimate with bands, trtexec readers and lint, TensorRT engines, the remote-L4 bundle."""
