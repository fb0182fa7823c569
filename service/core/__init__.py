"""The serving core: engine, repository, tasks, batching and step scheduling, runtime. Imports no grpc, torch or training."""
