"""Offline prompt translation: language detection per prompt segment, then a pluggable translator."""
