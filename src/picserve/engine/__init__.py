"""The generation engine: torch + diffusers. Knows nothing of HTTP, PICPIK names, SQL or storage."""
