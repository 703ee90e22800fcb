"""Checkpoint -> map, without Lightning: sliding-window prediction of whole scenes, explanations."""
