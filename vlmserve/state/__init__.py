"""State shared across replicas: a Redis link that degrades to memory, and what lives there."""
