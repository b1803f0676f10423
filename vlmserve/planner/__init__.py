"""Sizing a model to the GPUs: the memory model, the plan search and its explanation."""
