"""Anchors/default boxes, IoU assignment, Hungarian matcher."""
