"""Inference engines behind one interface (:mod:`server.engine.base`)."""
