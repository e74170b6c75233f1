"""Benchmarks that ship with the package (``mixroute bench ...``)."""
