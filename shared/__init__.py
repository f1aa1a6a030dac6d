"""Switchboard's common package: the event contract, topics, settings and wiring."""
