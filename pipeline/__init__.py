"""Nightshift: an Airflow-orchestrated batch pipeline for computer-vision models."""
__version__ = "0.1.0"
