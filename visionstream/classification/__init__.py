"""Classification: the SqueezeNet model with its preprocessing, labels and version."""
