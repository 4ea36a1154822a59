"""Models, each travelling with its preprocessing and labels."""

TopK = list[tuple[int, str, float]]  # (class_index, category, confidence), best first
