"""The response cache: repeated deterministic requests answered without running the model."""
