"""Inference engines behind one interface (:mod:`vlmserve.engine.base`)."""
