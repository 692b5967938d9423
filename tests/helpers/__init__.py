"""Helpers shared by the tests: servers, hostile peers, one fake clock, services."""
