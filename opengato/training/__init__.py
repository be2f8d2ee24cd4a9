"""Training: next-token prediction on the mixture, validation, logging, exact resume, DDP."""
