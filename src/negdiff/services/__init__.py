"""Services: machinery several experiments share (conditions, streaming, the layer cache).

Below the experiments, above the core; never imports an experiment."""
