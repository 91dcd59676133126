"""Measuring tools over the device core (no torch): `moedge bench` and `moedge eval`, read bandwidth,
page residency."""
