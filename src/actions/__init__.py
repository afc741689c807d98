"""The Flyte v2 Actions Service: service, store backends and the watch fan-out."""
