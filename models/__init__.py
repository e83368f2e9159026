"""Builds the network (embedded tiny default or a real checkpoint) and its adapters."""
