"""Models, each travelling with its preprocessing and labels."""
