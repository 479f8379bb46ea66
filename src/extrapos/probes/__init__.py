"""Probes: measurements of a trained model (dialogue history use and recall, long generation)."""
