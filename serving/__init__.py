"""Streaming service (Kafka in, forecasts out, REST). Built in the streaming issue."""

__all__: list[str] = []
