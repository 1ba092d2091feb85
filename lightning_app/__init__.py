"""vmr application layer: CLI, configuration, train(cfg), logging, callbacks, retrieval metrics."""
