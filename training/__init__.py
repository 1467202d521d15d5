"""Making a model: the training loop, resume state, schedule, loss, validation, monitor, DDP."""
