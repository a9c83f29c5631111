"""Tests of the sink subsystem (bezant_trio.sinks)."""
