"""Experiments: the NTP vs NTP+KLAL comparison and the demo that reports it."""
