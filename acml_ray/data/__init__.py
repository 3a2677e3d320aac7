"""Molecule sources and the training table (graphs + cached modality vectors)."""
