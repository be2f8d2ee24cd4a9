"""From data on disk to training batches: token shards, windows with prompts, the mixture."""
