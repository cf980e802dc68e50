"""Stancewatch: news monitoring for territorial concessions and peace talks."""

__version__ = "0.1.0"
