"""The gRPC front end: servicers (proto <-> core values), server wiring, security, metrics and interceptors."""
