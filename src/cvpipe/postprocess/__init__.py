"""Turning dense model outputs into final predictions: score filter, NMS, caps, mask cleaning."""
