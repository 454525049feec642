"""The watchdog: one thread per process that finds leaks, reclaims dead holders' connections,
reports hoarding, raises alerts and stores leak events.
"""
