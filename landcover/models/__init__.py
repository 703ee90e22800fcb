"""Networks and their weights: architectures, encoders, pretrained weights and their input transform, safe loading."""
