"""The client layer: what one party computes locally: the local training step (jobs, optimizers, batching) and its device."""
